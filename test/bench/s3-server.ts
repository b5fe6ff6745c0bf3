// A loopback S3-protocol server in its own process, so uploads in the benchmark cross a real socket.
import S3rver from "s3rver";
const [dir, bucket] = [process.argv[2]!, process.argv[3]!];
const server = new S3rver({
  address: "127.0.0.1",
  port: 0,
  silent: true,
  directory: dir,
  configureBuckets: [{ name: bucket }],
});
const { port } = await server.run();
console.log(JSON.stringify({ port }));
process.on("SIGTERM", () => server.close().then(() => process.exit(0)));
