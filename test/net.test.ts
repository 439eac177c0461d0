import { describe, expect, it } from 'vitest';
import { isLoopbackAddress } from '../src/shared/net.js';

describe('isLoopbackAddress', () => {
  it.each(['127.0.0.1', '127.1.2.3', '::1', '0:0:0:0:0:0:0:1', '[::1]', '::1%lo', '::ffff:127.0.0.1', '0:0:0:0:0:ffff:7f00:1', '::FFFF:127.9.9.9', ' 127.0.0.1 '])('%s is loopback', (a) => {
    expect(isLoopbackAddress(a)).toBe(true);
  });
  it.each(['10.0.0.1', '128.0.0.1', '::2', '::', '::ffff:10.0.0.1', 'fe80::1', '1::1', 'localhost', '', '127.0.0.1.5', 'garbage'])('%s is not', (a) => {
    expect(isLoopbackAddress(a)).toBe(false);
  });
});
