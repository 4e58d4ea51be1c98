"""The scheduler's store wing: everything that talks to Redis or Postgres.

Owns the live state in Redis (`live`: `LiveState`, split by key family into
`pod_keys` (pods and reservations), `copy_keys`, `usage_keys` (usage and traffic),
`mirror_keys` (the registry mirror) and `failure_keys`, on `keys.LiveKeys`; the Lua
scripts of `scripts` keep a pod's memory accounting atomic; the client is `connection`),
the registry mirror's upkeep (`mirror`), the leader lease for the background duties
(`lease`), the registry in Postgres (`registry`: tables, row converters, queries), and
its schema migrations (`migrate`, Alembic's `migrations/`).

May import: `meshserve.common`, the scheduler's `models` (record types), `routing.log`
(the route log the scripts append to), redis and sqlalchemy. Never imports the use
cases (`service`, `copies`, `vmodels`, ...) nor the transports (`server`, `api`, `app`).
"""
