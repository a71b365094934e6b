"""moto's SQS service alone on HOST PORT, for the SQS tests.

The same moto SQS application `moto_server -H HOST -p PORT` serves, with one race mended:

- moto's `Queue.delete_message` rebuilds the queue's message list without the lock that
  `add_message` appends under, so a message sent while another is deleted can vanish. The kill
  -9 proof caught it (four orders of one send batch never delivered) once it sent and consumed at
  the same time. Deletes here take that lock.

and faster in two ways that change no behaviour:

- it serves SQS alone (moto's own `create_backend_app("sqs")`): `moto_server` serves every AWS
  service and spends about a fifth of each request finding which one was meant;
- the clock moto's SQS reads, milliseconds since the epoch, comes from `time.time()` rather than
  from datetime arithmetic: moto reads it for every message of the queue on every send and
  receive (visible? delayed?), and at 16 us a reading that was most of its time.
"""

import sys
import time

import moto.sqs.models

from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import run_simple

_unix_time_millis = moto.sqs.models.unix_time_millis


def unix_time_millis(dt=None):
    return time.time() * 1000.0 if dt is None else _unix_time_millis(dt)


moto.sqs.models.unix_time_millis = unix_time_millis

_delete_message = moto.sqs.models.Queue.delete_message


def delete_message(self, receipt_handle):
    with self._messages_lock:
        return _delete_message(self, receipt_handle)


moto.sqs.models.Queue.delete_message = delete_message

host, port = sys.argv[1], int(sys.argv[2])
run_simple(host, port, create_backend_app("sqs"), threaded=True, use_reloader=False)
