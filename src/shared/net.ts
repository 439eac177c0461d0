import { isIPv4, isIPv6 } from 'node:net';

/**
 * Whether a peer address (as text: IPv4, IPv6 in any spelling, or
 * IPv4-mapped IPv6) is a loopback address: 127.0.0.0/8 or ::1.
 */
export function isLoopbackAddress(address: string): boolean {
  let a = address.trim().toLowerCase();
  if (a.startsWith('[') && a.endsWith(']')) a = a.slice(1, -1);
  const zone = a.indexOf('%');
  if (zone >= 0) a = a.slice(0, zone);
  if (isIPv4(a)) return a.startsWith('127.');
  if (!isIPv6(a)) return false;
  if (a.includes('.')) {
    // IPv4-mapped: ::ffff:127.0.0.1 (or its long form).
    const cut = a.lastIndexOf(':') + 1;
    const groups = ipv6Groups(`${a.slice(0, cut)}0:0`);
    return groups !== undefined && groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff && a.slice(cut).startsWith('127.');
  }
  const groups = ipv6Groups(a);
  return groups !== undefined && groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1;
}

function ipv6Groups(a: string): number[] | undefined {
  const parts = a.split('::');
  if (parts.length > 2) return undefined;
  const left = parts[0] === '' ? [] : (parts[0] as string).split(':');
  const right = parts.length === 1 || parts[1] === '' ? [] : (parts[1] as string).split(':');
  const fill = parts.length === 2 ? 8 - left.length - right.length : 0;
  if (fill < 0) return undefined;
  const groups = [...left, ...Array<string>(fill).fill('0'), ...right].map((g) => parseInt(g, 16));
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}
