// Subscribes through rpcbalancer's WebSocket with ethers' WebSocketProvider, as a dapp would:
// new blocks (eth_subscribe newHeads) and the logs of one topic (eth_subscribe logs).
//
//   node subscribe.js WS_URL SECONDS TOPIC
//
// After SECONDS, prints one JSON object: the block numbers in the order they came, the logs
// as [blockNumber, transactionHash, index], and the errors seen.
'use strict';

const { ethers } = require('ethers');
const [url, seconds, topic] = process.argv.slice(2);

(async () => {
  const out = { blocks: [], logs: [], errors: [], subscribed: false };
  const provider = new ethers.WebSocketProvider(url, undefined, { staticNetwork: true });
  provider.on('error', (err) => out.errors.push(String(err && err.message || err).slice(0, 300)));
  try {
    await provider.on('block', (number) => out.blocks.push(number));
    await provider.on({ topics: [topic] }, (log) => {
      out.logs.push([log.blockNumber, log.transactionHash, log.index]);
    });
    out.subscribed = true;
  } catch (err) {
    out.errors.push(String(err && err.message || err).slice(0, 300));
  }
  await new Promise((resolve) => setTimeout(resolve, Number(seconds) * 1000));
  console.log(JSON.stringify(out));
  await provider.destroy();
  process.exit(0);
})();
