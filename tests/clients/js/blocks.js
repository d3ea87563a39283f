// Follows an EVM chain through rpcbalancer with ethers' block events, as a dapp does:
//
//   node blocks.js URL SECONDS
//
// ethers polls eth_blockNumber and emits "block" for every number from the last one it saw
// up to the new head; a head that went back would make it emit blocks again. For each block
// event the script reads the block (getBlock) as a dapp would. Prints one JSON object: the
// numbers emitted, the blocks read ([number, hash, parentHash]), how many reads were null,
// and any error. tests/integration/test_one_chain.py checks them.
'use strict';

const { ethers } = require('ethers');
const [url, secondsArg] = process.argv.slice(2);
const out = { emitted: [], blocks: [], nulls: 0, errors: [] };

(async () => {
  const provider = new ethers.JsonRpcProvider(url, undefined, {
    cacheTimeout: -1,
    polling: true,
    staticNetwork: true,
  });
  provider.pollingInterval = 200;
  const reads = [];
  await provider.on('block', (number) => {
    out.emitted.push(number);
    reads.push(
      provider.getBlock(number).then(
        (block) => {
          if (block === null) out.nulls += 1;
          else out.blocks.push([block.number, block.hash, block.parentHash]);
        },
        (err) => out.errors.push(`getBlock(${number}): ${String(err.shortMessage || err.message || err).slice(0, 300)}`),
      ),
    );
  });
  provider.on('error', (err) => out.errors.push(`provider: ${String(err.shortMessage || err.message || err).slice(0, 300)}`));
  await new Promise((resolve) => setTimeout(resolve, Number(secondsArg) * 1000));
  await provider.removeAllListeners();
  await Promise.all(reads);
  provider.destroy();
  out.blocks.sort((a, b) => a[0] - b[0]);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
})().catch((err) => {
  out.errors.push(`fatal: ${String(err && err.message || err).slice(0, 500)}`);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
});
