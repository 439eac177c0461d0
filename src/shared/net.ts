import { BlockList } from 'node:net';
import { isIPv4, isIPv6 } from 'node:net';

/** 127.0.0.0/8 and ::1; BlockList also matches IPv4-mapped IPv6 (::ffff:127.x.x.x) against the IPv4 rule. */
const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * Whether a peer address (as text: IPv4, IPv6 in any spelling, or
 * IPv4-mapped IPv6) is a loopback address: 127.0.0.0/8 or ::1.
 */
export function isLoopbackAddress(address: string): boolean {
  let a = address.trim().toLowerCase();
  if (a.startsWith('[') && a.endsWith(']')) a = a.slice(1, -1);
  const zone = a.indexOf('%');
  if (zone >= 0) a = a.slice(0, zone);
  if (isIPv4(a)) return LOOPBACK.check(a, 'ipv4');
  return isIPv6(a) && LOOPBACK.check(a, 'ipv6');
}
