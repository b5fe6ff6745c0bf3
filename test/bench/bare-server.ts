// The baseline for /me: Bun.serve answering a constant JSON body of the same shape and size.
const body = JSON.stringify({
  user: {
    id: "3dc2660d-d4a8-458b-8bac-f7dd766ba67d",
    email: "bench@example.com",
    name: "Bench",
    createdAt: "2026-11-25T11:39:22.253Z",
  },
  session: { expiresAt: "2026-12-25T11:39:22.827Z" },
});
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch: () => new Response(body, { headers: { "content-type": "application/json" } }),
});
console.log(JSON.stringify({ port: server.port }));
