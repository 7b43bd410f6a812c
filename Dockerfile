# certgate: one image for the API (default command) and the SMTP workers (`npm run start:worker`).
#   docker build -t certgate .
FROM node:20-bookworm-slim

ENV NODE_ENV=production \
    # npm runs scripts through this shell; bash execs the single command of a script, so the
    # SIGTERM that npm forwards reaches the process and the API/worker drain (with /bin/sh it does not).
    npm_config_script_shell=/bin/bash \
    npm_config_update_notifier=false

WORKDIR /app

# Dependencies first, so that a source change does not reinstall them (tsx runs the TypeScript).
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

COPY . .

USER node
EXPOSE 8080
CMD ["npm", "run", "start:api"]
