// Node-RED settings for benchmarks/end_to_end.py (the flow is node-red-flow.json next to this file).
// No editor, no HTTP nodes; the function node gets Node's crypto and the HMAC key through the global context.
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: Number(process.env.NR_PORT || 1880),
    httpAdminRoot: false,
    httpNodeRoot: false,
    credentialSecret: false,
    flowFilePretty: true,
    functionGlobalContext: {
        crypto: require("crypto"),
        key: process.env.HMAC_KEY || "benchmark-key",
    },
    logging: { console: { level: "warn", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false } },
};
