r"""An OpenAI-compatible server (`/v1/chat/completions`, `/v1/models`) on FastAPI + uvicorn.

  python launch/serve.py --backend oracle --toyworld DIR --port 8000
      answers every data-synthesis role from the toy world in DIR (written by
      `launch/prepare.py --toyworld`), so that synthesize -> prepare -> train runs offline.
  ... --latency 0.2 --requests_per_minute 600 --fault_rate 0.2
      misbehaves like a loaded endpoint: a delay per request, a rate limit answered with 429 +
      Retry-After, random faults (429, 500, 503, slow answers, dropped connections, truncated or
      malformed JSON, content filter); tests also queue faults with POST /v1/faults.
"""

import sys

from absl import app, flags

from rewatch_jax.serve.app import FAULTS, Faults, create_app

FLAGS = flags.FLAGS
flags.DEFINE_enum("backend", "oracle", ["oracle"], "What answers: oracle (the toy world's ground truth).")
flags.DEFINE_string("toyworld", None, "The toy world's folder (the oracle backend).")
flags.DEFINE_list("models", ["oracle"], "Model names the server answers to.")
flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (loopback by default).")
flags.DEFINE_integer("port", 8000, "Port.")
flags.DEFINE_float("latency", 0.0, "Seconds added to every chat completion.")
flags.DEFINE_float("requests_per_minute", 0.0, "Rate limit enforced with 429 + Retry-After (0: none).")
flags.DEFINE_float("fault_rate", 0.0, "Share of requests answered with a random fault.")
flags.DEFINE_list("faults", list(FAULTS), "The fault kinds --fault_rate draws from.")
flags.DEFINE_float("slow_seconds", 5.0, "How long a 'slow' fault waits.")
flags.DEFINE_integer("seed", 0, "Seed of the random faults.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import uvicorn

  from data_synthesis.oracle import OracleBackend
  if not FLAGS.toyworld:
    sys.exit("error: --backend oracle needs --toyworld DIR (write one with `python launch/prepare.py --toyworld N "
             "--out DIR`)")
  try:
    backend = OracleBackend(FLAGS.toyworld, tuple(FLAGS.models))
    faults = Faults(FLAGS.latency, FLAGS.requests_per_minute, FLAGS.fault_rate, tuple(FLAGS.faults),
                    FLAGS.slow_seconds, FLAGS.seed)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"serving {FLAGS.models} on http://{FLAGS.host}:{FLAGS.port}/v1", flush=True)
  uvicorn.run(create_app(backend, faults), host=FLAGS.host, port=FLAGS.port, log_level="warning")


def entry():
  app.run(main)


if __name__ == "__main__":
  entry()
