"""moto's DynamoDB service alone on HOST PORT, for the DynamoDB store's tests.

The same moto DynamoDB application `moto_server -H HOST -p PORT` serves, with one race mended
that real DynamoDB does not have: moto checks a conditional write's condition and then writes,
with nothing between them, while its server runs requests on many threads. Two
`PutItem ... attribute_not_exists(id)` of one item at once could both succeed (1 trial in 100
with 16 writers had two winners). Here every call into moto's DynamoDB backend holds one lock,
so each request is atomic, as each of DynamoDB's single-item writes is.

It serves DynamoDB alone (moto's own `create_backend_app("dynamodb")`), as
scripts/sqs-server.py does SQS.
"""

import functools
import sys
import threading

import moto.dynamodb.models

from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import run_simple

_lock = threading.RLock()


def _atomic(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _lock:
            return method(*args, **kwargs)

    return wrapper


for _name in (
    "get_item",
    "put_item",
    "update_item",
    "delete_item",
    "batch_get_item",
    "batch_write_item",
    "transact_get_items",
    "transact_write_items",
    "query",
    "scan",
    "create_table",
    "delete_table",
    "describe_table",
    "update_time_to_live",
    "describe_time_to_live",
    "execute_statement",
    "execute_transaction",
    "batch_execute_statement",
):
    setattr(
        moto.dynamodb.models.DynamoDBBackend,
        _name,
        _atomic(getattr(moto.dynamodb.models.DynamoDBBackend, _name)),
    )

host, port = sys.argv[1], int(sys.argv[2])
run_simple(host, port, create_backend_app("dynamodb"), threaded=True, use_reloader=False)
