"""What a real API server refuses that the operator's objects could run into, with its own messages.

- object names: a DNS subdomain (at most 253 bytes of lowercase alphanumerics, '-' and '.');
  ``generateName`` prefixes are cut to 58 bytes before the 5 random characters, as the API server does;
- label keys and values: values at most 63 bytes of alphanumerics, '-', '_' and '.', starting and ending
  with an alphanumeric; the name part of a key the same, its optional prefix a DNS subdomain;
- Jobs: the labels the API server adds to the pod template (``batch.kubernetes.io/job-name`` carries the
  Job's name, so a Job name over 63 bytes is refused), and the fields that cannot change once the Job
  exists (``spec.template`` unless the Job is suspended and has never started — then only its scheduling
  directives —, ``spec.selector``, ``spec.completions``, ``spec.completionMode``, ``spec.podFailurePolicy``).

Messages follow k8s.io/apimachinery's validation (1.34): ``<Kind>.<group> "<name>" is invalid: <field>:
Invalid value: "<value>": <why>``, several problems as ``[a, b]``.
"""

from __future__ import annotations

import re
from typing import Any

MAX_NAME = 253
MAX_LABEL_VALUE = 63
MAX_GENERATED_PREFIX = 58  # 63 minus the 5 random characters
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SUBDOMAIN_WHY = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_WHY = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
# What may change in a suspended Job's pod template that has never started (mutable scheduling directives).
SCHEDULING_DIRECTIVES = ("nodeSelector", "tolerations", "affinity", "schedulingGates")
IMMUTABLE_JOB_FIELDS = ("selector", "completions", "completionMode", "podFailurePolicy")


def generated_name(prefix: str, suffix: str) -> str:
    return prefix[:MAX_GENERATED_PREFIX] + suffix


def name_problems(name: str) -> list[str]:
    problems = []
    if len(name.encode()) > MAX_NAME:
        problems.append(f'metadata.name: Invalid value: "{name}": must be no more than {MAX_NAME} bytes')
    if not DNS_SUBDOMAIN.match(name):
        problems.append(f'metadata.name: Invalid value: "{name}": {SUBDOMAIN_WHY}')
    return problems


def label_problems(labels: dict[str, Any] | None, field: str) -> list[str]:
    problems = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if not name or len(name.encode()) > MAX_LABEL_VALUE or not LABEL_VALUE.match(name):
            problems.append(f'{field}: Invalid value: "{key}": name part must be no more than 63 bytes')
        if prefix and (len(prefix.encode()) > MAX_NAME or not DNS_SUBDOMAIN.match(prefix)):
            problems.append(f'{field}: Invalid value: "{key}": prefix part {SUBDOMAIN_WHY}')
        text = str(value)
        if len(text.encode()) > MAX_LABEL_VALUE:
            problems.append(f'{field}: Invalid value: "{text}": must be no more than {MAX_LABEL_VALUE} bytes')
        elif not LABEL_VALUE.match(text):
            problems.append(f'{field}: Invalid value: "{text}": {LABEL_WHY}')
    return problems


def job_update_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    before, after = old.get("spec") or {}, new.get("spec") or {}
    problems = [
        f"spec.{field}: Invalid value: {after.get(field)!r}: field is immutable"
        for field in IMMUTABLE_JOB_FIELDS
        if before.get(field) != after.get(field)
    ]
    old_template, new_template = before.get("template") or {}, after.get("template") or {}
    never_started = bool(before.get("suspend")) and not (old.get("status") or {}).get("startTime")
    if never_started:
        old_template, new_template = _without_directives(old_template), _without_directives(new_template)
    if old_template != new_template:
        problems.append("spec.template: Invalid value: core.PodTemplateSpec{...}: field is immutable")
    return problems


def _without_directives(template: dict[str, Any]) -> dict[str, Any]:
    spec = {k: v for k, v in (template.get("spec") or {}).items() if k not in SCHEDULING_DIRECTIVES}
    meta = {k: v for k, v in (template.get("metadata") or {}).items() if k not in {"labels", "annotations"}}
    return {**template, "spec": spec, "metadata": meta}


def object_problems(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every problem a real API server reports for writing obj (old: the stored object it replaces)."""
    meta = obj.get("metadata") or {}
    problems = [] if old is not None else name_problems(meta.get("name", ""))
    problems += label_problems(meta.get("labels"), "metadata.labels")
    if obj.get("kind") == "Job":
        template_meta = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        problems += label_problems(template_meta.get("labels"), "spec.template.labels")
        if old is not None:
            problems += job_update_problems(old, obj)
    return problems


def invalid_message(obj: dict[str, Any], problems: list[str]) -> str:
    group = obj.get("apiVersion", "v1").rpartition("/")[0]
    kind = f"{obj.get('kind')}.{group}" if group else str(obj.get("kind"))
    listed = problems[0] if len(problems) == 1 else f"[{', '.join(problems)}]"
    return f'{kind} "{obj.get("metadata", {}).get("name", "")}" is invalid: {listed}'
