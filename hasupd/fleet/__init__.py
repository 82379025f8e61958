"""The fleet: placed services run on the host that owns them in etcd, with self-fencing.

``etcd`` is the client (etcd's JSON gRPC gateway, blocking, run off the loop), ``keys`` the key layout,
``node`` the lease keeper + ownership logic, ``controller`` the wiring to the Manager.
"""
