// The conformance suite's tasks for a Node worker (examples/node/worker.js --tasks this file); the
// contract they follow is written down in tasks.py, their Python twin.
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const { setTimeout: sleep } = require('node:timers/promises')

const logFile = path.join(process.env.PGJOBS_CONFORMANCE_LOG ?? '.', `${process.pid}.jsonl`)

function record (job, event, how) {
  const line = { job: Number(job.id), attempt: job.attempts, event, t: Date.now() / 1000 }
  if (how) line.how = how
  fs.appendFileSync(logFile, JSON.stringify(line) + '\n')
}

// Runs a task body between a start and an end line, the end saying how it ended.
async function logged (job, signal, body) {
  record(job, 'start')
  try {
    const result = await body()
    record(job, 'end', 'returned')
    return result
  } catch (err) {
    record(job, 'end', signal.aborted ? 'stopped' : 'raised')
    throw err
  }
}

module.exports = {
  'conformance.echo': (args, { job, signal }) => logged(job, signal, async () => args),

  'conformance.sleep': ({ seconds, gate }, { job, signal, touch }) => logged(job, signal, async () => {
    const began = Date.now()
    let touched = began
    for (;;) {
      const left = seconds - (Date.now() - began) / 1000
      if (left <= 0 || (gate && fs.existsSync(gate))) break
      await sleep(Math.min(left, 0.05) * 1000, undefined, { signal })
      if (Date.now() - touched >= 250) {
        touched = Date.now()
        await touch(Math.min(1, (touched - began) / 1000 / seconds))
      }
    }
    return { slept: seconds, attempt: job.attempts }
  }),

  'conformance.fail': ({ message }, { job, signal }) => logged(job, signal, async () => {
    throw new Error(message)
  })
}
