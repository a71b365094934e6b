#!/usr/bin/env bash
# What a store can do at best for a record written twice (at the claim, then at the completion),
# beside its batched limit (each key written once): the floors BENCHMARKS.md compares oncely's
# lease path with. Batches of 1,000 36-character keys, 4 connections, each statement its own
# durable transaction (READ COMMITTED on MariaDB, as oncely's store), as `oncely bench`'s limit
# does. Needs pgbench / mysqlslap.
#
#   bench/floors/run.sh postgres [SECONDS]      # 127.0.0.1:5432, user postgres, database test
#   bench/floors/run.sh mariadb [BATCHES]       # 127.0.0.1:3306, root, database floor (created)
#
# Contenders (keys/s each, and / limit):
#   limit    INSERT of bare keys (a primary key and nothing else), conflicts ignored
#   two      the same keys inserted, then updated (a boolean set): the least any record with a
#            lease and an outcome costs
#   oncely   oncely's own record and indexes (oncely_records' columns, the expires_at index):
#            inserted in progress, then completed (completed, expires_at and outcome set)
#   hot      (PostgreSQL) oncely's record with purge's index on a column the completion leaves
#            alone and pages with room: the completion is a HOT update (not built; measured through
#            the store as postgres-hot-record.patch)
#   split    (PostgreSQL) claims in a table of their own, moved to the records table at
#            completion, as the SQLite store does (a layout not built)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
store="${1:?postgres or mariadb}"
ratio() { python3 -c "import sys; l=float(sys.argv[1]); print(' '.join(f'{n}={float(v):,.0f} keys/s ({float(v)/l:.2f}x)' for n, v in zip(sys.argv[2::2], sys.argv[3::2])))" "$@"; }
case "$store" in
  postgres)
    secs="${2:-15}"
    pg="psql -q -h 127.0.0.1 -U postgres test"
    $pg -f "$here/postgres-setup.sql" 2>/dev/null
    declare -A rate
    for c in limit two oncely hot split; do
      # The planner's statistics lag a table growing this fast: without these, it soon joins
      # the batch to every row of the scope. oncely's store turns the same joins off in its
      # sessions (SESSION_SETTINGS in stores/postgres/src/store.rs) and uses the primary key.
      [ "$c" != limit ] && [ "$c" != two ] && export PGOPTIONS="-c enable_hashjoin=off -c enable_mergejoin=off -c enable_bitmapscan=off -c enable_seqscan=off"
      tps=$(pgbench -h 127.0.0.1 -U postgres -n -c 4 -j 2 -T "$secs" -f "$here/postgres-$c.sql" test 2>/dev/null \
        | awk '/^tps/ {print $3; exit}')
      rate[$c]=$(python3 -c "print($tps * 1000)")
      unset PGOPTIONS
    done
    $pg -c "DROP SCHEMA floor CASCADE" 2>/dev/null
    ratio "${rate[limit]}" limit "${rate[limit]}" two "${rate[two]}" oncely "${rate[oncely]}" \
      hot "${rate[hot]}" split "${rate[split]}"
    ;;
  mariadb)
    batches="${2:-200}"
    my="mariadb -h 127.0.0.1 -uroot"
    $my < "$here/mariadb-setup.sql"
    declare -A rate
    for c in limit two oncely; do
      # Statements per batch: SET, INSERT (and UPDATE); mysqlslap counts them over all clients.
      per=$(grep -o ';' "$here/mariadb-$c.sql" | wc -l)
      start=$(date +%s.%N)
      mysqlslap -h 127.0.0.1 -uroot --create-schema=floor --concurrency=4 --iterations=1 \
        --number-of-queries=$((batches * (per + 1))) --query="$here/mariadb-$c.sql" --delimiter=";" >/dev/null
      end=$(date +%s.%N)
      rate[$c]=$(python3 -c "print($batches * 1000 / ($end - $start))")
    done
    $my -e "DROP DATABASE floor"
    ratio "${rate[limit]}" limit "${rate[limit]}" two "${rate[two]}" oncely "${rate[oncely]}"
    ;;
  *) echo "postgres or mariadb" >&2; exit 2 ;;
esac
