"""moto's SQS service alone on HOST PORT, for the SQS tests.

The same moto SQS application `moto_server -H HOST -p PORT` serves, with three races mended,
each a behaviour real SQS does not have:

- moto's `Queue.delete_message` rebuilds the queue's message list without the lock that
  `add_message` appends under, so a message sent while another is deleted can vanish. The kill
  -9 proof caught it (four orders of one send batch never delivered) once it sent and consumed at
  the same time. Deletes here take that lock.
- moto's `receive_message` scans the queue without that lock, so two receives at once (the
  server is threaded) can both hand out one message, and a visibility change can land in the
  middle of a scan. Each scan here holds the lock, as do visibility changes.
- during a long poll, moto decides once, before waiting, which FIFO message groups have a
  message in flight; a group another consumer receives from meanwhile is not blocked, so the
  waiting receive hands out a later message of it while earlier ones are in flight. Each scan
  here decides afresh (a long poll is a series of scans, each without waiting, under the lock).
  The FIFO order trial caught both (a group's event handled twice, or after a later one: 4 runs
  in 12).

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

_receive_message = moto.sqs.models.SQSBackend.receive_message


def receive_message(
    self,
    queue_name,
    count,
    wait_seconds_timeout,
    visibility_timeout,
    message_attribute_names=None,
):
    queue = self.get_queue(queue_name)
    deadline = time.time() + wait_seconds_timeout
    with queue._messages_lock:
        while True:
            # Without waiting, moto scans once, with the groups in flight read now.
            received = _receive_message(
                self, queue_name, count, 0, visibility_timeout, message_attribute_names
            )
            left = deadline - time.time()
            if received or left <= 0:
                return received
            # Woken by a send; messages that become visible again by time are seen by polling.
            queue._messages_lock.wait(timeout=min(0.05, left))


moto.sqs.models.SQSBackend.receive_message = receive_message

_change_message_visibility = moto.sqs.models.SQSBackend.change_message_visibility


def change_message_visibility(self, queue_name, receipt_handle, visibility_timeout):
    with self.get_queue(queue_name)._messages_lock:
        return _change_message_visibility(
            self, queue_name, receipt_handle, visibility_timeout
        )


moto.sqs.models.SQSBackend.change_message_visibility = change_message_visibility

host, port = sys.argv[1], int(sys.argv[2])
run_simple(host, port, create_backend_app("sqs"), threaded=True, use_reloader=False)
