"""A real third-party HTTP client with automatic retries, as users configure it.

Posts one payment per Idempotency-Key through `URL`, with `requests` and urllib3's `Retry`:
a 0.3 s read timeout (shorter than the upstream takes, so the first attempt of each key gives
up and retries), retries on 409, 502 and 503 for every method, honouring Retry-After. Prints
one JSON line per key: its final status and body, or the error that ended its retries.

Usage: retrying_client.py URL KEYS THREADS
(an https:// URL is verified against the roots in REQUESTS_CA_BUNDLE, or certifi's)
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


def session():
    retry = Retry(
        total=4,
        backoff_factor=0.2,
        allowed_methods=None,
        status_forcelist=[409, 502, 503],
    )
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    return s


def pay(url, key):
    s = session()
    try:
        r = s.post(
            url,
            json={"amount": 100, "key": key},
            headers={"Idempotency-Key": key},
            timeout=(2, 0.3),
        )
        return {
            "key": key,
            "status": r.status_code,
            "body": r.text,
            "replayed": r.headers.get("Idempotent-Replayed") == "true",
        }
    except requests.RequestException as e:
        return {"key": key, "error": f"{type(e).__name__}: {e}"}
    finally:
        s.close()


def main():
    url, keys, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for answer in pool.map(lambda k: pay(url, f"pay-{k}"), range(keys)):
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
