/**
 * Small text checks shared by domains (generic: no certgate knowledge).
 */

/** Whether `s` holds a C0 control character (NUL included) or DEL. */
export function hasControlChars(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}
