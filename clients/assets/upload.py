"""Copy prepared adapter folders into an S3 bucket in the store's plain layout
(`<name>/adapter_config.json`, `<name>/adapter_model.safetensors`): what `prepare-demo
--s3-bucket` and `chameleon demo --store s3` do before the store serves them."""
from __future__ import annotations

import asyncio
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


async def upload_adapters(folder: Path, backend, progress=lambda m: None) -> list[str]:
    """Uploads every adapter folder under `folder` whose objects are missing or differ in size."""
    names = []
    for d in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        if not all((d / f).is_file() for f in ADAPTER_FILES):
            continue
        for f in ADAPTER_FILES:
            key, size = f"{d.name}/{f}", (d / f).stat().st_size
            have = await backend.head(key)
            if have is None or have.size != size:
                await backend.write(key, await asyncio.to_thread((d / f).read_bytes))
        names.append(d.name)
    progress(f"{len(names)} adapters in the bucket")
    return names


def upload_to_s3(folder: Path, bucket: str, endpoint: str | None, progress=lambda m: None) -> list[str]:
    from adapter_store.s3_backend import S3Backend, S3Config

    return asyncio.run(upload_adapters(folder, S3Backend(S3Config(bucket=bucket, endpoint=endpoint)),
                                       progress))
