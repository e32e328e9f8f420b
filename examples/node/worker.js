#!/usr/bin/env node
// A pgjobs worker in Node.js, on node-postgres alone.
//
// pgjobs keeps its whole protocol in SQL functions of the `pgjobs` schema, so a worker in any
// language is a loop of a few statements. This one reads top to bottom:
//
//   1. the command line and the task module      6. running a task (AbortController per run)
//   2. connections, errors and backoff           7. recording outcomes under the attempt fence
//   3. registering as a worker                   8. the reaper (one leader, by lease)
//   4. the heartbeat, and the fence              9. shutdown: release, worker_stopped
//   5. LISTEN wake-ups, and the claim loop
//
//   node worker.js --dsn postgresql://… --queue default --concurrency 4 --tasks ./tasks.js
//
// The task module exports task name → async function(args, { job, signal, touch }). `args` is the
// job's JSON arguments as stored (an object or an array); `signal` aborts when the run is stopped
// (cancelled, killed by the reaper, no longer ours, given back at shutdown); `touch(progress,
// meta)` records progress and returns false once the run is no longer current.

import crypto from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import pg from 'pg'

// -- 1. The command line and the task module -----------------------------------------------------

const usage = `usage: node worker.js --tasks MODULE [--dsn URL] [--queue Q]... [--concurrency N]
       [--heart-rate S] [--poll-interval S] [--shutdown-grace S] [--reap-interval S (0: none)]`

function options () {
  const { values } = parseArgs({
    options: {
      dsn: { type: 'string' },
      queue: { type: 'string', short: 'q', multiple: true },
      concurrency: { type: 'string', short: 'c', default: '10' },
      tasks: { type: 'string' },
      'heart-rate': { type: 'string', default: '5' },
      'poll-interval': { type: 'string', default: '1' },
      'shutdown-grace': { type: 'string', default: '30' },
      'reap-interval': { type: 'string', default: '5' }
    }
  })
  const seconds = (name, min) => {
    const n = Number(values[name])
    if (!(n >= min) || !Number.isFinite(n)) throw new Error(`--${name} must be a number of seconds >= ${min}`)
    return n
  }
  const dsn = values.dsn ?? process.env.PGJOBS_DSN ?? process.env.DATABASE_URL
  if (!dsn) throw new Error('no database: give --dsn, or set PGJOBS_DSN or DATABASE_URL (a postgresql:// URL)')
  if (!values.tasks) throw new Error('--tasks MODULE is required')
  const concurrency = Number(values.concurrency)
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error('--concurrency must be at least 1')
  return {
    dsn,
    queues: [...new Set(values.queue ?? ['default'])],
    concurrency,
    tasksPath: values.tasks,
    heartRate: seconds('heart-rate', 0.01),
    pollInterval: seconds('poll-interval', 0.01),
    shutdownGrace: seconds('shutdown-grace', 0),
    reapInterval: seconds('reap-interval', 0)
  }
}

let config
try {
  config = options()
} catch (err) {
  process.stderr.write(`${err.message}\n${usage}\n`)
  process.exit(2)
}
const { dsn, queues, concurrency, heartRate, pollInterval, shutdownGrace, reapInterval } = config

// A task module: its default export (module.exports for CommonJS) or its named exports.
const module_ = await import(pathToFileURL(path.resolve(config.tasksPath)).href)
const exported = module_.default !== null && typeof module_.default === 'object' ? module_.default : module_
const tasks = Object.fromEntries(Object.entries(exported).filter(([, f]) => typeof f === 'function'))

// A fresh id per process start: the database refuses an id it has seen.
const workerId = `${os.hostname()}:${process.pid}:${crypto.randomBytes(3).toString('hex')}`

function log (level, message) {
  process.stderr.write(`${new Date().toISOString()} ${level} ${message}\n`)
}

// -- 2. Connections, errors and backoff ----------------------------------------------------------

// Two sessions: a pool for the statements (claims, outcomes, touches, heartbeats, the reaper: two
// connections, so that a heartbeat never queues behind a claim), and a client that LISTENs.
const connection = { connectionString: dsn, keepAlive: true, connectionTimeoutMillis: 10_000 }
const pool = new pg.Pool({ ...connection, max: 2, application_name: `pgjobs-node main ${workerId}` })
// An idle connection that breaks is dropped by the pool, which opens a new one on demand.
pool.on('error', (err) => log('WARN', `connection lost: ${err.message}`))

// Errors a later attempt can mend: no SQLSTATE at all (refused, reset, timed out), the classes 08
// (connection), 40 (serialization, deadlock), 53 (resources), 57 (shutdown, restart), 58 (system),
// and 25006 (read-only: a failover left the session on a standby). Anything else is a bug or a
// wrong configuration.
function transient (err) {
  if (!(err instanceof pg.DatabaseError)) return true
  return ['08', '40', '53', '57', '58'].includes(err.code?.slice(0, 2)) || err.code === '25006'
}

// An outage is logged once when it starts and once when it ends; waits double from 50 ms to 5 s,
// with jitter, so a fleet of workers does not come back in step.
const outage = { since: null, failures: 0 }
function failed (what, err) {
  outage.failures++
  if (!transient(err)) log('ERROR', `${what} failed: ${err.message}`)
  else if (outage.since === null) log('WARN', `database unavailable (${what}: ${err.message})`)
  outage.since ??= Date.now()
}
function recovered () {
  if (outage.since !== null) {
    log('WARN', `database available again after ${((Date.now() - outage.since) / 1000).toFixed(1)} s`)
  }
  outage.since = null
  outage.failures = 0
}
const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000))
const backoff = () => sleep(Math.min(5, 0.05 * 2 ** outage.failures) * (0.5 + Math.random() / 2))

// A wake-up call: ring() ends the current (or the next) wait() early; wait() tells whether it rang.
class Bell {
  #rung = false
  #wake = null
  ring () {
    this.#rung = true
    this.#wake?.()
  }

  async wait (seconds) {
    if (!this.#rung) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, seconds * 1000)
        this.#wake = () => { clearTimeout(timer); resolve() }
      })
      this.#wake = null
    }
    const rung = this.#rung
    this.#rung = false
    return rung
  }
}

// The worker's state.
const runs = new Map() // job id (a string: bigint) → { job, controller, reason }
const outbox = [] // outcomes of finished runs, not yet recorded
const claimBell = new Bell() // a notification, a free slot, an outcome, stop()
const beatBell = new Bell() // beat now (the LISTEN session was (re)established)
let claimDue = true // jobs may be waiting: a notification, a poll tick, a claim that filled every slot
let saturated = false // the last claim filled every free slot
let claimInDoubt = false // a claim failed with its connection: it may have committed
let claiming = false // a claim is in flight: its jobs may be missing from what a heartbeat names
let stopping = false
let closed = false
let lastBeat = performance.now() // when the last heartbeat that went through was sent
let fenced = false

// -- 3. Registering as a worker -------------------------------------------------------------------

// A row in pgjobs.workers: the reaper resets this worker's runs if its heartbeats stop.
const register = () => pool.query('SELECT pgjobs.worker_register($1, $2, $3, $4, $5, $6, $7)',
  [workerId, os.hostname(), process.pid, os.userInfo().username, queues, concurrency, heartRate])

async function registerAtStart () {
  while (!stopping) {
    try {
      await register()
      recovered()
      return true
    } catch (err) {
      if (!transient(err)) {
        const hint = ['3F000', '42883'].includes(err.code) ? ' (is the schema there? run pgjobs migrate)' : ''
        log('ERROR', `cannot start: ${err.message}${hint}`)
        process.exit(2)
      }
      failed('start-up, waiting', err)
      await backoff()
    }
  }
  return false
}

// -- 4. The heartbeat, and the fence --------------------------------------------------------------

// At a steady rate: one statement refreshes this worker's row and the runs it holds (job ids with
// the attempt that claimed each), and says which runs to stop: `abort` (cancelled, or killed by the
// reaper for its timeout) and `lost` (reset by the reaper: maybe running elsewhere by now).
// It names every run claimed and not yet recorded (running, or waiting in the outbox): the
// database settles any other run under this worker's id as lost (`settled`), unless the beat says
// a claim is in flight, whose jobs it cannot name yet.
async function heartLoop () {
  while (!closed) {
    const began = performance.now()
    const inFlight = claiming
    const held = [...runs.values()].map((r) => r.job).concat(outbox.map((o) => o.job))
    try {
      const { rows: [beat] } = await pool.query(
        'SELECT status, abort, lost, settled FROM pgjobs.worker_heartbeat($1, $2::bigint[], $3::int[], NULL, $4)',
        [workerId, held.map((j) => j.id), held.map((j) => j.attempts), inFlight])
      lastBeat = began
      if (fenced) {
        fenced = false
        log('WARN', 'heartbeats go through again; claiming jobs')
        claimDue = true
        claimBell.ring()
      }
      if (beat.status === 'stopping') stop('asked through the database')
      // Stop what the beat was about: the attempts it named, not a later claim of the same job.
      const named = new Map(held.map((j) => [j.id, j.attempts]))
      for (const id of beat.abort) stopRun(id, 'abort', named.get(id))
      for (const id of beat.lost) stopRun(id, 'lost', named.get(id))
      if (beat.settled.length > 0) {
        log('WARN', `the database settled ${beat.settled.length} run(s) under this worker's id that it did not hold: jobs ${beat.settled.join(', ')}`)
      }
    } catch (err) {
      if (err.code === 'P0002') { // a reaper forgot us after a week away: start over as a worker
        log('WARN', 'this worker was forgotten by the database; registering again')
        await register().catch((e) => log('ERROR', `registering failed: ${e.message}`))
      } else if (!transient(err)) {
        log('ERROR', `heartbeat failed: ${err.message}`)
      }
    }
    await beatBell.wait(Math.max(0, heartRate - (performance.now() - began) / 1000))
  }
}

// The reaper declares a worker dead once it has not beat for 2.1 heart rates, and hands its runs to
// others. A worker that could not beat for 1.85 heart rates gives up its runs first, so that none
// of them overlaps its re-run elsewhere, and claims nothing until a beat goes through again.
function checkFence () {
  const silent = (performance.now() - lastBeat) / 1000
  if (silent >= heartRate * 1.85 && !fenced) {
    fenced = true
    log('WARN', `no heartbeat went through for ${silent.toFixed(1)} s: giving up ${runs.size} run(s)`)
    for (const id of runs.keys()) stopRun(id, 'fenced')
  }
}

// -- 5. LISTEN wake-ups, and the claim loop -------------------------------------------------------

// A session that LISTENs on the channel of each queue (a job became due), pgjobs.cancel (runs to
// stop) and pgjobs.worker (a worker asked to stop). Reconnects when it breaks; notifications sent
// meanwhile are lost, so it then claims and beats at once (the poll and the heartbeat cover the rest).
let listener = null
async function listenLoop () {
  while (!closed) {
    const client = new pg.Client({ ...connection, application_name: `pgjobs-node listen ${workerId}` })
    const ended = new Promise((resolve) => { client.on('error', resolve); client.on('end', resolve) })
    try {
      await client.connect()
      const { rows } = await client.query(
        'SELECT pgjobs.queue_channel(q) AS channel FROM unnest($1::text[]) AS q', [queues])
      for (const channel of [...rows.map((r) => r.channel), 'pgjobs.cancel', 'pgjobs.worker']) {
        await client.query(`LISTEN ${client.escapeIdentifier(channel)}`)
      }
      client.on('notification', onNotification)
      listener = client
      recovered()
      claimDue = true
      claimBell.ring()
      beatBell.ring()
      const err = await ended
      if (err instanceof Error && !closed) failed('listen', err)
    } catch (err) {
      failed('listen', err)
    }
    listener = null
    client.end().catch(() => {})
    if (!closed) await backoff()
  }
}

// Any login may NOTIFY any channel: a notification is a hint to look, never an order. A cancel or
// a stop request makes the heart beat now; the beat says which runs to abort and whether to stop.
function onNotification ({ channel }) {
  if (channel === 'pgjobs.cancel' || channel === 'pgjobs.worker') {
    beatBell.ring()
  } else {
    claimDue = true
    claimBell.ring()
  }
}

// Records outcomes, then claims a batch sized to the free slots when jobs may be due; waits for a
// bell or the poll interval. Returns once stopping and every run has ended and been recorded.
async function claimLoop () {
  for (;;) {
    if (outbox.length > 0) await recordOutcomes()
    if (stopping && runs.size === 0 && outbox.length === 0) return
    if (stopping && Date.now() > stoppedAt + (shutdownGrace + 10) * 1000) {
      log('ERROR', `could not record ${outbox.length} outcome(s); the reaper will reset those jobs`)
      return
    }
    const free = stopping || fenced ? 0 : concurrency - runs.size
    if (free > 0 && claimDue) {
      claimDue = false
      saturated = (await claim(free)) === free
    }
    if (!(await claimBell.wait(pollInterval))) claimDue = true // the poll: a lost NOTIFY strands nothing
  }
}

// `dequeue` marks the jobs active for this worker, attempts + 1: that attempt is the run's fence.
async function claim (free) {
  try {
    if (claimInDoubt) await releaseUnknown()
    claiming = true
    const { rows } = await pool.query(
      'SELECT id, task, args, attempts, max_attempts, queue, group_key, meta FROM pgjobs.dequeue($1, $2, $3)',
      [workerId, queues, free])
    recovered()
    if (fenced) { // the fence began while the claim was in flight: these runs may not start
      for (const job of rows) {
        log('WARN', `job ${job.id} ${job.task} given back without running: the worker is fenced`)
        outbox.push({ kind: 'release', job, ms: 0 })
      }
      claimBell.ring()
    } else {
      for (const job of rows) start(job)
    }
    return rows.length
  } catch (err) {
    claimInDoubt ||= !(err instanceof pg.DatabaseError) // no answer: did it commit?
    failed('claim', err)
    await backoff()
    return 0
  } finally {
    claiming = false
  }
}

// A claim whose answer was lost may have committed, leaving jobs active under our id that we do not
// run: give back whatever the database says we hold besides our runs and unrecorded outcomes.
async function releaseUnknown () {
  const ours = [...runs.keys(), ...outbox.map((o) => o.job.id)]
  const { rows: [r] } = await pool.query(`SELECT pgjobs.release($1, ARRAY(
      SELECT id FROM pgjobs.jobs WHERE worker_id = $1 AND status IN ('active', 'aborting')
        AND expires_at IS NULL AND id <> ALL ($2::bigint[]))) AS released`, [workerId, ours])
  claimInDoubt = false
  if (r.released > 0) log('WARN', `gave back ${r.released} job(s) claimed by a claim whose answer was lost`)
}

// -- 6. Running a task ----------------------------------------------------------------------------

class NotRetryable extends Error {}

const STOPPED = {
  abort: 'cancelled while running',
  lost: 'the run is no longer this worker\'s',
  fenced: 'given up: this worker could not reach the database to prove it is alive',
  shutdown: 'given back to the queue: the worker is stopping'
}

function start (job) {
  // A run of an earlier attempt still going here was reset by the reaper: it is not ours any more.
  stopRun(job.id, 'lost')
  const run = { job, controller: new AbortController(), reason: null }
  runs.set(job.id, run)
  log('INFO', `job ${job.id} ${job.task} active (attempt ${job.attempts} of ${job.max_attempts})`)
  execute(run) // in the background; its outcome goes to the outbox
}

// Stop a run: its task sees its signal abort, and the run ends at once whether the task listens or
// not (a task that ignores the signal goes on in the background, but nothing it returns counts).
function stopRun (id, reason, attempt = undefined) {
  const run = runs.get(String(id))
  if (run && run.reason === null && (attempt === undefined || run.job.attempts === attempt)) {
    run.reason = reason
    run.controller.abort(new Error(`job ${id}: ${STOPPED[reason]}`))
  }
}

function aborted (signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) reject(signal.reason)
    signal.addEventListener('abort', () => reject(signal.reason), { once: true })
  })
}

async function execute (run) {
  const { job, controller: { signal } } = run
  const began = performance.now()
  let outcome
  try {
    const task = tasks[job.task]
    if (!task) throw new NotRetryable(`unknown task '${job.task}': no task of that name in this worker`)
    const context = { job, signal, touch: (progress = null, meta = null) => touch(job, progress, meta) }
    const result = await Promise.race([task(job.args, context), aborted(signal)])
    let encoded
    try {
      encoded = result === undefined || result === null ? null : JSON.stringify(result)
    } catch (err) {
      throw new NotRetryable(`the result of task '${job.task}' is not JSON: ${err.message}`)
    }
    outcome = { kind: 'complete', result: encoded }
  } catch (err) {
    if (run.reason === null) { // the task threw: another attempt, unless none can mend it (NUL escaped)
      const error = err instanceof NotRetryable ? err.message : String(err?.stack ?? err)
      outcome = { kind: 'fail', error: error.replaceAll('\0', '\\0'), retry: !(err instanceof NotRetryable) }
    } else { // the worker stopped the run
      log('INFO', `job ${job.id} ${job.task} stopped: ${STOPPED[run.reason]}`)
      outcome = {
        lost: null, // not ours any more: record nothing
        abort: { kind: 'fail', error: STOPPED.abort }, // a reaper kill keeps the reaper's reason
        fenced: { kind: 'fail', error: `given up by worker ${workerId}: it could not prove it is alive` },
        shutdown: { kind: 'release' } // back to the queue, the attempt not counted
      }[run.reason]
    }
  }
  if (runs.get(job.id) === run) runs.delete(job.id)
  if (outcome !== null) outbox.push({ ...outcome, job, ms: performance.now() - began })
  if (saturated) claimDue = true // a slot is free and more jobs may be due
  claimBell.ring()
}

// Progress and meta for a running job, fenced by its attempt; also refreshes its heartbeat.
async function touch (job, progress, meta) {
  try {
    const { rows: [r] } = await pool.query('SELECT pgjobs.touch($1, $2, $3, $4) AS touched',
      [job.id, job.attempts, progress, meta === null ? null : JSON.stringify(meta)])
    return r.touched
  } catch (err) {
    if (transient(err)) return true // not recorded this time; the heartbeat and the fence watch the run
    throw err
  }
}

// -- 7. Recording outcomes under the attempt fence ------------------------------------------------

// Each statement names the attempt that claimed the run: when the run was reset meanwhile (the
// reaper took it from a worker it thought dead), the statement changes nothing and says so.
// Outcomes wait in the outbox while the database is away, and are recorded when it is back.
async function recordOutcomes () {
  while (outbox.length > 0) {
    const o = outbox[0]
    const { job } = o
    try {
      if (o.kind === 'complete') {
        const { rows: [r] } = await pool.query('SELECT pgjobs.complete($1, $2::jsonb, $3) AS done',
          [job.id, o.result, job.attempts])
        log(r.done ? 'INFO' : 'WARN', r.done
          ? `job ${job.id} ${job.task} complete in ${o.ms.toFixed(1)} ms`
          : `job ${job.id} ${job.task} finished, but the run was no longer ours: result dropped`)
      } else if (o.kind === 'fail') {
        const { rows: [r] } = await pool.query('SELECT pgjobs.fail($1, $2, $3, $4) AS status',
          [job.id, o.error, job.attempts, o.retry ?? true])
        const summary = o.error.split('\n')[0]
        log(r.status === 'queued' ? 'INFO' : 'WARN', r.status === null
          ? `job ${job.id} ${job.task} failed, but the run was no longer ours: ${summary}`
          : `job ${job.id} ${job.task} ${r.status === 'queued' ? 'queued for retry' : r.status}: ${summary}`)
      } else {
        await pool.query('SELECT pgjobs.release($1, $2::bigint[])', [workerId, [job.id]])
        log('INFO', `job ${job.id} ${job.task} given back to the queue`)
      }
      outbox.shift()
      recovered()
    } catch (err) {
      failed('recording outcomes', err)
      if (!transient(err)) {
        outbox.shift() // another try cannot mend it; the reaper resets the job when this worker stops
        log('ERROR', `job ${job.id} ${job.task}: outcome dropped`)
      }
      await backoff()
      return
    }
  }
}

// -- 8. The reaper --------------------------------------------------------------------------------

// Every worker offers to reap; `reap_as` runs a pass only for the holder of the 'reaper' lease (three
// intervals long, renewed by each pass), so one worker of the fleet reaps at a time.
async function reapLoop () {
  while (!closed) {
    await sleep(reapInterval * (0.8 + Math.random() * 0.4))
    if (closed) return
    try {
      const { rows: [pass] } = await pool.query('SELECT * FROM pgjobs.reap_as($1, $2)', [workerId, Math.min(reapInterval * 3, 600)])
      if (pass.killed || pass.dead_workers || pass.reset) {
        log('INFO', `reaper: ${pass.killed} killed, ${pass.dead_workers} dead worker(s), ${pass.reset} reset`)
      }
    } catch (err) {
      if (!transient(err)) log('ERROR', `reaper pass failed: ${err.message}`)
    }
  }
}

// -- 9. Shutdown ----------------------------------------------------------------------------------

// Stop claiming; running jobs get shutdownGrace seconds to finish, then are stopped and given back.
let stoppedAt = null
let graceTimer = null
function stop (why) {
  if (stopping) return
  stopping = true
  stoppedAt = Date.now()
  log('INFO', `worker ${workerId} stopping (${why})`)
  graceTimer = setTimeout(() => {
    if (runs.size > 0) log('WARN', `giving ${runs.size} unfinished job(s) back to the queue`)
    for (const id of runs.keys()) stopRun(id, 'shutdown')
  }, shutdownGrace * 1000)
  claimBell.ring()
}

let signals = 0
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    if (++signals > 1) {
      log('WARN', `second ${sig}: exiting at once`)
      process.exit(1)
    }
    stop(`${sig} received; again to exit at once`)
  })
}

if (await registerAtStart()) {
  log('INFO', `worker ${workerId} started: queues ${queues}, concurrency ${concurrency}, ` +
    `tasks ${Object.keys(tasks).sort().join(', ') || 'none'}`)
  lastBeat = performance.now()
  const fenceTimer = setInterval(checkFence, heartRate * 100)
  heartLoop()
  listenLoop()
  if (reapInterval > 0) reapLoop()
  await claimLoop()
  clearTimeout(graceTimer)
  clearInterval(fenceTimer)
  closed = true
  beatBell.ring()
  await listener?.end().catch(() => {})
  if (reapInterval > 0) await pool.query('SELECT pgjobs.lease_release($1, $2)', ['reaper', workerId]).catch(() => {})
  try {
    await pool.query('SELECT pgjobs.worker_stopped($1)', [workerId]) // a clean exit
  } catch (err) {
    log('WARN', `could not record this worker's exit (${err.message}); the reaper will mark it dead`)
  }
  await pool.end().catch(() => {})
  log('INFO', `worker ${workerId} stopped`)
}
process.exit(0)
