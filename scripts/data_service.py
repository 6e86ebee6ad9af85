r"""Start a tf.data service dispatcher or worker for `--data_service` training.

One dispatcher per training job, any number of workers (on the hosts whose
CPUs should decode); the trainer runs with --data_service=grpc://HOST:PORT of
the dispatcher. Each server runs until SIGTERM or Ctrl-C, then exits 0.
The workers read the training files themselves: the --train_dir paths the
trainer sees must exist on every worker host (shared storage).

Example:
  python scripts/data_service.py --dispatcher --port=5050
  python scripts/data_service.py --worker --dispatcher_address=dispatcher-host:5050 \
      --port=5051
  python scripts/train_baseline.py --train_dir=/shared/train --val_dir=/shared/valid \
      --model_dir=runs/b --data_service=grpc://dispatcher-host:5050

Exit status: 0 when stopped by SIGTERM or Ctrl-C, 2 on usage errors (a bad
flag combination or value) with a one-line message.
"""

import socket

from absl import app
from absl import flags
from absl import logging

from catdog import cli

flags.DEFINE_boolean("dispatcher", False,
                     "Run the dispatcher (one per training job).")
flags.DEFINE_boolean("worker", False,
                     "Run a worker; it registers with --dispatcher_address.")
flags.DEFINE_integer("port", None,
                     "TCP port to serve on (0: any free port); default: 5050 for "
                     "--dispatcher, 5051 for --worker. The trainer's --data_service "
                     "names the dispatcher's.")
flags.DEFINE_string("dispatcher_address", None,
                    "--worker: the dispatcher as HOST:PORT (no grpc://).")
flags.DEFINE_string("worker_host", None,
                    "--worker: the host name or address trainers reach this worker "
                    "at (the dispatcher hands it out); default: this machine's "
                    "host name.")
flags.DEFINE_string("work_dir", None,
                    "--dispatcher: folder (local or shared) where the dispatcher "
                    "journals its state, so a restarted dispatcher resumes its jobs; "
                    "default: none (a restart forgets them).")

FLAGS = flags.FLAGS


def _start():
    if FLAGS.dispatcher == FLAGS.worker:
        raise ValueError("Give exactly one of --dispatcher or --worker. "
                         f"Received: dispatcher={FLAGS.dispatcher}, worker={FLAGS.worker}")
    if FLAGS.dispatcher and (FLAGS.dispatcher_address or FLAGS.worker_host):
        raise ValueError("--dispatcher_address and --worker_host are for --worker.")
    if FLAGS.worker and FLAGS.work_dir:
        raise ValueError("--work_dir is for --dispatcher.")
    if FLAGS.worker and not FLAGS.dispatcher_address:
        raise ValueError("--worker needs --dispatcher_address=HOST:PORT of the "
                         "dispatcher. Received: dispatcher_address=None")
    # TensorFlow only once the flags make sense: a usage error answers at once.
    from catdog import data_service  # pylint: disable=import-outside-toplevel
    port = FLAGS.port if FLAGS.port is not None else (5050 if FLAGS.dispatcher else 5051)
    data_service.check_port(port, allow_zero=True)
    if FLAGS.dispatcher:
        server = data_service.start_dispatcher(port, work_dir=FLAGS.work_dir)
        port = int(server.target.rsplit(":", 1)[1])
        logging.info("dispatcher serving on port %d (trainers: "
                     "--data_service=grpc://%s:%d)", port, socket.gethostname(), port)
        return server, "dispatcher"
    data_service.parse_host_port(FLAGS.dispatcher_address)
    host = FLAGS.worker_host or socket.gethostname()
    server = data_service.start_worker(FLAGS.dispatcher_address, port, host=host)
    logging.info("worker serving on %s:%d, registered with %s", host, port,
                 FLAGS.dispatcher_address)
    return server, "worker"


def main(argv):
    usage = cli.refuse_positional(argv)
    if usage is not None:
        return usage
    started = []
    code = cli.run_main(lambda: started.extend(_start()))
    if code:
        return code
    server, what = started
    from catdog import data_service  # pylint: disable=import-outside-toplevel
    data_service.serve_until_signal(server, what)
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
