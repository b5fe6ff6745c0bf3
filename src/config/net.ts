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
