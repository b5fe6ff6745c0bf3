import { BlockList, isIP } from "node:net";

/** The default of TRUSTED_PROXIES: loopback and the private ranges a proxy in front of us usually sits on. */
export const DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8, ::1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7";

/**
 * Parse a list of addresses and CIDR ranges (comma or space separated) into a matcher.
 * Throws an Error naming the first entry that is neither.
 */
export function parseProxyList(text: string): BlockList {
  const list = new BlockList();
  for (const entry of text.split(/[\s,]+/).filter(Boolean)) {
    const [address = "", bits, ...rest] = entry.split("/");
    const family = isIP(address);
    const max = family === 4 ? 32 : 128;
    if (!family || rest.length || (bits !== undefined && !(/^\d{1,3}$/.test(bits) && Number(bits) <= max))) {
      throw new Error(`"${entry}" is not an IP address or CIDR range`);
    }
    const type = family === 4 ? "ipv4" : "ipv6";
    if (bits === undefined) list.addAddress(address, type);
    else list.addSubnet(address, Number(bits), type);
  }
  return list;
}

/** "::ffff:203.0.113.7" and "203.0.113.7" are one client: keep one spelling, so one throttle key. */
function normalize(address: string): string {
  return /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(address) ? address.slice(7) : address;
}

function isTrusted(address: string, trusted: BlockList): boolean {
  const family = isIP(address);
  return family !== 0 && trusted.check(address, family === 4 ? "ipv4" : "ipv6");
}

/**
 * The client's address: the rightmost hop that no trusted proxy added. Each proxy appends the
 * address it was connected from, so we walk X-Forwarded-For from the right, past our own proxies;
 * everything left of the first stranger was written by the client and proves nothing. A value
 * that is not an address was written by the client too: the proxy that passed it on answers for it.
 */
export function clientAddress(
  peer: string | undefined,
  forwardedFor: string | undefined,
  trusted: BlockList,
): string | undefined {
  if (peer === undefined) return undefined;
  let client = normalize(peer);
  if (!isTrusted(client, trusted)) return client;
  const hops = (forwardedFor ?? "")
    .split(",")
    .map((h) => h.trim())
    .filter(Boolean);
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = normalize(hops[i]!);
    if (!isIP(hop)) return client;
    client = hop;
    if (!isTrusted(hop, trusted)) return client;
  }
  return client;
}

/** The eight 16-bit groups of an IPv6 address (an IPv4 tail becomes the last two), or undefined. */
function ipv6Groups(address: string): number[] | undefined {
  if (isIP(address) !== 6 || address.includes("%")) return undefined;
  let text = address.toLowerCase();
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const part = (s: string | undefined) => (s ? s.split(":").map((g) => Number.parseInt(g, 16)) : []);
  const left = part(head);
  const right = part(tail);
  return [...left, ...Array(8 - left.length - right.length).fill(0), ...right];
}

/**
 * The address as the attempt limits count it. An IPv6 host holds a whole /64 (a home line, a
 * server) and can send from any address in it, so IPv6 counts by its /64; an IPv4 address written
 * as IPv6 (::ffff:c000:201) is that IPv4 address. One spelling for each, so no other spelling of
 * the same client starts a fresh count.
 */
export function countedAddress(address: string): string {
  const groups = ipv6Groups(address);
  if (!groups) return address;
  if (groups.slice(0, 6).every((g, i) => g === (i === 5 ? 0xffff : 0))) {
    const [hi = 0, lo = 0] = groups.slice(6);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return `${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(":")}::/64`;
}
