/** Paths inside a home as tar names them, and the archive's exclusions. */

/**
 * Matches paths relative to the home against exclude entries: an entry
 * excludes that exact path and everything under it. `tmp` excludes `tmp` and
 * `tmp/x`, not `sessions/tmp`.
 */
export function exclusions(exclude: readonly string[]): (rel: string) => boolean {
  const roots = exclude.map(relativePath).filter((e) => e !== '');
  return (rel) => roots.some((root) => rel === root || rel.startsWith(`${root}/`));
}

/** `./a//b/` → `a/b`; the home itself is ''. */
export function relativePath(path: string): string {
  return path
    .split('/')
    .filter((part) => part !== '' && part !== '.')
    .join('/');
}
