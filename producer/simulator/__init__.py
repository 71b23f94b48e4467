"""A OneRoster 1.1 / 1.2 simulator for tests, benchmarks and ``oneroster-cdc demo``.

Public API (stable; other modules' tests use it)::

    from producer.simulator import DistrictSpec, Faults, Simulator

    sim = Simulator(
        [DistrictSpec(id="springfield", version="1.2", size="small", seed=1,
                      max_page_size=500, quirks=frozenset({"x_count"}),
                      faults=Faults(rate=0.1, kinds=("rate_limit",), seed=3))],
        classlink_api_key="cl-key",   # enables GET /applications
        admin=True,                   # enables /_admin/...
    )
    async with sim.serve(host="127.0.0.1", port=0) as root:   # root = "http://127.0.0.1:PORT"
        d = sim.district("springfield")
        d.base_url        # f"{root}/springfield"  (config's base_url)
        d.oneroster_url   # base_url + "/ims/oneroster/rostering/v1p2" (1.1: "/ims/oneroster/v1p1")
        d.token_url       # f"{root}/springfield/oauth/token"
        d.spec.client_id, d.spec.client_secret
        d.create("users", {"givenName": "Ann"}); d.update("users", sid, familyName="X")
        d.mark_tobedeleted("users", sid); d.hard_delete("enrollments", sid)
        d.truth_log(); d.truth_state("users")        # ground truth
        sim.set_faults("springfield", Faults(rate=1.0, kinds=("server_error",)))
        sim.advance_clock(3600)

URL layout (``root`` = the server):

* ``POST {root}/{district}/oauth/token``: OAuth 2.0 client credentials (Basic or form body).
* ``GET {root}/{district}/ims/oneroster/rostering/v1p2/{collection}[/{sourcedId}]`` (1.2) or
  ``.../ims/oneroster/v1p1/...`` (1.1, OAuth 1.0a signed unless ``auth="oauth2"``).
* ``GET {root}/applications`` and ``GET {root}/applications/{id}/server``: ClassLink discovery
  (``Authorization: Bearer <classlink_api_key>``), listing the 1.1 districts.
* ``GET {root}/{oneroster_application_id}/ims/oneroster/v1p1/...``: ClassLink proxy paths,
  authorised by the tenant's ``bearer``.
* ``/_admin/...``: see :mod:`producer.simulator.admin`.

Sizes (students; users ~2x students plus staff, enrollments ~6.8x): ``tiny`` 12, ``small`` 500,
``medium`` 25 000 (~250k records), ``large`` 310 000 (634k users, 2.1M enrollments), or an int.
Records are generated lazily from ``(seed, district, entity, index)``; a large district starts in
milliseconds. Base ``dateLastModified`` values lie before the simulator's start; mutations are
stamped with the simulated clock (wall time + ``advance_clock`` offsets, or frozen at ``start``
with ``frozen_clock=True``). ``base_url`` and friends are valid once ``serve`` has bound.

Truth: ``District.truth_log()`` lists :class:`TruthChange` entries (seq, district, entity,
sourced_id, op created|updated|deleted, record after or None, at, reason); a ``tobedeleted``
update and a hard delete are both ``deleted``. ``District.truth_state(entity)`` is the set of
active records as served (quirks aside).

Limits: listings without a filter (or with a ``dateLastModified>`` delta filter) and sorted by
sourcedId are index arithmetic; any other filter or sort scans the entity once per dataset
revision (cached), which takes seconds on a large district. An update that changes a user's role
or an org's type does not move it between /students, /teachers, /schools, etc.

Faults: :mod:`producer.simulator.faults`; quirks: :mod:`producer.simulator.quirks`; data
layout: :mod:`producer.simulator.data`; CLI: ``python -m producer.simulator --help``;
measurement: ``python -m producer.simulator.measure --size large``.
"""

from producer.simulator.data import SIZE_STUDENTS, Dataset
from producer.simulator.district import District, DistrictSpec
from producer.simulator.faults import KINDS as FAULT_KINDS
from producer.simulator.faults import Faults
from producer.simulator.quirks import QUIRKS
from producer.simulator.server import Simulator
from producer.simulator.store import SimClock, TruthChange

__all__ = [
    "FAULT_KINDS",
    "QUIRKS",
    "SIZE_STUDENTS",
    "Dataset",
    "District",
    "DistrictSpec",
    "Faults",
    "SimClock",
    "Simulator",
    "TruthChange",
]
