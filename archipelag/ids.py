"""Identifiers: typed names for the ids that cross module boundaries."""

from __future__ import annotations

import secrets
import uuid
from typing import NewType

JobId = NewType("JobId", str)
HostId = NewType("HostId", str)
AccountId = NewType("AccountId", int)
WorkloadSlug = NewType("WorkloadSlug", str)


def new_job_id() -> JobId:
    return JobId(str(uuid.uuid4()))


def new_host_id() -> HostId:
    return HostId(f"host-{secrets.token_hex(4)}")
