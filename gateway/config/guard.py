"""The `guard:` block: checks on a route's requests (a top-level `guard:` is the default of
every route without its own).

    guard:
      - name: pii-local            # named in headers, errors, metrics
        detect: [email, phone, card, iban]
        action: reroute            # mask | block | reroute | flag
        allow: [dedicated]         # reroute: provider kinds this data may go to
      - name: mask-rest
        detect: [email, card]
        custom:
          - {kind: ssn, regex: '\\b\\d{3}-\\d{2}-\\d{4}\\b'}
          - {kind: project, terms: [Nightjar]}
        action: mask               # typed placeholders upstream; originals back in the answer
      - name: no-keys
        detect: [secret]
        action: block              # 400 guardrail_blocked naming the check
      - name: injection
        injection: {threshold: 1.0}
        action: flag
      - name: no-leaks
        detect: [email, card, secret]
        reads: [answer]            # request (the default), answer, or both
        action: mask               # the client sees placeholders; streams stay streams
      - name: classifier
        model: {deployment: guard-gpu, timeout_ms: 300, on_error: open}
        action: block              # the deployment's classifier says "unsafe"

`to_checks` turns the block into routing.guard's Checks; a regex that does not compile is a
config error, and so is a guard model on a deployment the config does not have.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from routing.guard import Check, GuardModel
from routing.injection import DEFAULT_THRESHOLD
from routing.pii import KINDS, Custom

Detect = Literal["email", "phone", "card", "secret", "iban", "ip"]
ProviderKind = Literal["serverless", "dedicated", "closed_api"]
Stage = Literal["request", "answer"]


def _request_only() -> list[Stage]:
    return ["request"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomDetector(_Strict):
    kind: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=40)]
    regex: str | None = None
    terms: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CustomDetector:
        if (self.regex is None) == (self.terms is None):
            raise ValueError("give a custom detector either `regex` or `terms`")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self

    def detector(self) -> Custom:
        kind = self.kind.upper()
        if self.regex is not None:
            return Custom.regex(kind, self.regex)
        return Custom.terms(kind, self.terms or ())


class InjectionCheck(_Strict):
    threshold: Annotated[float, Field(gt=0)] = DEFAULT_THRESHOLD


class GuardModelConfig(_Strict):
    deployment: str
    timeout_ms: Annotated[int, Field(gt=0, le=60_000)] = 1000
    # No verdict in time (timeout, error, an answer it cannot read): `open` lets the
    # request by (the header and the ledger say so), `closed` counts it as a finding.
    on_error: Literal["open", "closed"] = "open"


class GuardCheck(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
    action: Literal["mask", "block", "reroute", "flag"]
    detect: list[Detect] = Field(default_factory=list)
    custom: list[CustomDetector] = Field(default_factory=list)
    injection: InjectionCheck | None = None
    restore: bool = True
    allow: list[ProviderKind] = Field(default_factory=list)
    # (Not `on:`: YAML 1.1 reads that key as the boolean true.)
    reads: Annotated[list[Stage], Field(min_length=1)] = Field(default_factory=_request_only)
    model: GuardModelConfig | None = None

    @model_validator(mode="after")
    def _coherent(self) -> GuardCheck:
        if not (self.detect or self.custom or self.injection or self.model):
            raise ValueError(
                f"check {self.name!r} detects nothing: give detect, custom, injection or model"
            )
        if self.action == "reroute" and not self.allow:
            raise ValueError(f"check {self.name!r}: reroute needs `allow` (provider kinds)")
        if self.action != "reroute" and self.allow:
            raise ValueError(f"check {self.name!r}: `allow` only goes with action reroute")
        if self.action == "mask" and self.injection is not None:
            raise ValueError(f"check {self.name!r}: an injection score cannot be masked")
        if "answer" in self.reads and self.action == "reroute":
            raise ValueError(f"check {self.name!r}: an answer cannot be rerouted")
        if "answer" in self.reads and (self.injection or self.model):
            raise ValueError(
                f"check {self.name!r}: injection scores and guard models read requests only"
            )
        if self.model is not None and self.action == "mask":
            raise ValueError(f"check {self.name!r}: a guard model's finding cannot be masked")
        return self

    def check(self) -> Check:
        kinds = tuple(k for k in KINDS if k.lower() in self.detect)
        model = self.model
        return Check(
            self.name,
            self.action,
            kinds=kinds,
            custom=tuple(c.detector() for c in self.custom),
            injection_threshold=self.injection.threshold if self.injection else None,
            restore=self.restore,
            allow_kinds=frozenset(self.allow),
            on_request="request" in self.reads,
            on_answer="answer" in self.reads,
            model=None
            if model is None
            else GuardModel(model.deployment, model.timeout_ms / 1000, model.on_error == "closed"),
        )


def to_checks(block: list[GuardCheck] | None) -> tuple[Check, ...]:
    return tuple(c.check() for c in block or ())


def unique_names(block: list[GuardCheck] | None) -> list[GuardCheck] | None:
    """A validator's helper: check names are unique within a block."""
    names = [c.name for c in block or ()]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"guard check names must be unique: {', '.join(duplicated)}")
    return block
