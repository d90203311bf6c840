// node-postgres's part of the driver matrix (tests/tests/drivers.rs): a fixed script of
// statements run against the database named on the command line, writing one line per
// operation to the result file, so that the run through shardgate can be compared with the
// run against one plain PostgreSQL holding the same rows.
//
// Usage: node matrix.js postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE
//
// Keys (customers.id = orders.customer_id) of this program, 4 hash partitions, s0 owning
// remainders 0 and 2, s1 owning 1 and 3 (the test checks the placement):
//   s0: 4001 4003 4004 4007 4008 4009 4011 4012 4014 4015 4016
//   s1: 4000 4002 4005 4006 4010 4013 4017 4018 4019
// Rows it inserts have order ids from 4100000 up.
'use strict';

const fs = require('fs');
const pg = require('pg');

const S0 = [4001, 4003, 4004, 4007, 4008, 4009, 4011, 4012, 4014, 4015, 4016];
const S1 = [4000, 4002, 4005, 4006, 4010, 4013, 4017, 4018, 4019];
const ORDERS_OF = 'SELECT id, amount FROM orders WHERE customer_id = $1 ORDER BY id';

const out = [];

// Every value as its text (bigint and numeric already come as strings), null as null.
function rows(result) {
  return result.rows.map((r) => r.map((v) => (v === null ? null : String(v))));
}

function emit(label, result) {
  out.push(`${label}: ${JSON.stringify(result)}`);
}

function error(label, e) {
  const state = e.code || e.name;
  out.push(`${label}: ERROR ${state}`);
  console.log(`${label}: ERROR ${state} ${e.message}`);
}

// Runs one operation; its result, or `ERROR <sqlstate>`, is the operation's line.
async function step(label, fn) {
  try {
    emit(label, await fn());
    return true;
  } catch (e) {
    error(label, e);
    return false;
  }
}

async function namedPrepared(client) {
  // Named prepared statements: parsed once per connection, then bound for each key.
  for (let round = 1; round <= 3; round++) {
    for (const key of [S0[0], S1[0], S0[1], S1[1]]) {
      await step(`named prepared round=${round} key=${key}`, async () =>
        rows(await client.query({ name: 'orders_of', text: ORDERS_OF, values: [key], rowMode: 'array' })));
    }
  }
  for (const key of [S1[2], S0[2]]) {
    await step(`named prepared update key=${key}`, async () =>
      (await client.query({
        name: 'bump',
        text: 'UPDATE orders SET amount = amount + $2 WHERE customer_id = $1',
        values: [key, '0.5'],
      })).rowCount);
    await step(`named prepared after update key=${key}`, async () =>
      rows(await client.query({ name: 'orders_of', text: ORDERS_OF, values: [key], rowMode: 'array' })));
  }
}

async function parallelReads(url) {
  // 200 point reads at once over a pool of 4 connections, keys of both shards.
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  const keys = [...S0, ...S1];
  try {
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => {
        const key = keys[i % keys.length];
        return pool
          .query({ text: 'SELECT id, name, country FROM customers WHERE id = $1', values: [key], rowMode: 'array' })
          .then((r) => JSON.stringify(rows(r)))
          .catch((e) => {
            console.log(`parallel read ${i} key=${key}: ERROR ${e.code} ${e.message}`);
            return `ERROR ${e.code}`;
          });
      }),
    );
    // One line per key: what each of its reads returned (all alike when all is well).
    const byKey = new Map();
    results.forEach((r, i) => {
      const key = keys[i % keys.length];
      if (!byKey.has(key)) byKey.set(key, new Map());
      const m = byKey.get(key);
      m.set(r, (m.get(r) || 0) + 1);
    });
    for (const key of keys) {
      const seen = [...byKey.get(key).entries()].map(([r, n]) => `${n}x ${r}`).sort();
      out.push(`parallel reads key=${key}: ${seen.join(' | ')}`);
    }
  } finally {
    await pool.end();
  }
}

async function transactions(client) {
  // BEGIN/COMMIT as queries of their own, statements with s1 keys between.
  const [a, b] = [S1[3], S1[4]];
  let label = `transaction commit keys=${a},${b}`;
  try {
    await client.query('BEGIN');
    emit(`${label} select`, rows(await client.query({ text: ORDERS_OF, values: [a], rowMode: 'array' })));
    emit(`${label} update`, (await client.query('UPDATE orders SET amount = amount + 2 WHERE customer_id = $1', [a])).rowCount);
    emit(`${label} insert`, (await client.query(
      'INSERT INTO orders (id, customer_id, amount) VALUES ($1, $2, $3), ($4, $5, $6)',
      [4100000, a, '10.10', 4100001, b, '20.20'])).rowCount);
    emit(`${label} select other`, rows(await client.query({ text: ORDERS_OF, values: [b], rowMode: 'array' })));
    await client.query('COMMIT');
    emit(`${label} commit`, 'ok');
  } catch (e) {
    error(label, e);
    await client.query('ROLLBACK').catch((r) => error(`${label} rollback`, r));
  }
  for (const key of [a, b]) {
    await step(`${label} after key=${key}`, async () =>
      rows(await client.query({ text: ORDERS_OF, values: [key], rowMode: 'array' })));
  }

  const c = S1[5];
  label = `transaction rollback key=${c}`;
  try {
    await client.query('BEGIN');
    emit(`${label} delete`, (await client.query('DELETE FROM orders WHERE customer_id = $1', [c])).rowCount);
    emit(`${label} select`, rows(await client.query({ text: ORDERS_OF, values: [c], rowMode: 'array' })));
    await client.query('ROLLBACK');
    emit(`${label} rollback`, 'ok');
  } catch (e) {
    error(label, e);
    await client.query('ROLLBACK').catch((r) => error(`${label} rollback`, r));
  }
  await step(`${label} after`, async () =>
    rows(await client.query({ text: ORDERS_OF, values: [c], rowMode: 'array' })));

  // A transaction whose first statement is a named prepared statement, on each shard.
  for (const key of [S1[6], S0[3]]) {
    label = `transaction named prepared key=${key}`;
    try {
      await client.query('BEGIN');
      emit(`${label} select`, rows(await client.query({ name: 'orders_of', text: ORDERS_OF, values: [key], rowMode: 'array' })));
      emit(`${label} update`, (await client.query({
        name: 'bump',
        text: 'UPDATE orders SET amount = amount + $2 WHERE customer_id = $1',
        values: [key, '1.25'],
      })).rowCount);
      await client.query('COMMIT');
      emit(`${label} commit`, 'ok');
    } catch (e) {
      error(label, e);
      await client.query('ROLLBACK').catch((r) => error(`${label} rollback`, r));
    }
    await step(`${label} after`, async () =>
      rows(await client.query({ text: ORDERS_OF, values: [key], rowMode: 'array' })));
  }
}

async function simpleQueries(client) {
  // Queries without parameters go through the simple protocol.
  for (const key of [S0[4], S1[7]]) {
    await step(`simple key=${key}`, async () =>
      rows(await client.query({ text: `SELECT id, name, country FROM customers WHERE id = ${key}`, rowMode: 'array' })));
  }
  // An IN list over both shards: no ORDER BY, so the rows are sorted here.
  await step('in-list both shards', async () =>
    rows(await client.query({
      text: 'SELECT id, customer_id, amount FROM orders WHERE customer_id IN ($1, $2) AND id < 1000000',
      values: [S0[5], S1[8]],
      rowMode: 'array',
    })).sort());
}

async function main() {
  if (process.argv.length !== 4) {
    console.error('usage: node matrix.js postgres://USER:PASSWORD@HOST:PORT/DB RESULT_FILE');
    process.exit(2);
  }
  const [url, resultFile] = process.argv.slice(2);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await namedPrepared(client);
    await transactions(client);
    await simpleQueries(client);
  } finally {
    await client.end();
  }
  await parallelReads(url);
  fs.writeFileSync(resultFile, out.join('\n') + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
