"""The scheduler's local-mode wing: the resources `meshserve apply -f` stores without
Kubernetes (`resources`: the table and its store, which the local controller watches).

May import: `meshserve.common`, the store wing's registry (its table lives on the same
metadata) and sqlalchemy. Never imports the use cases nor the transports.
"""
