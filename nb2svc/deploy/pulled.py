"""An image's labels read through the Docker daemon: pull, then inspect (what a Swarm node does anyway).

:func:`nb2svc.deploy.catalog.read_image` reads them from the registry's API without pulling; this is the
way for a daemon that reaches registries the registry client does not (its own mirrors, logins, proxies).
"""

from __future__ import annotations

from typing import Any

import docker.errors
import requests.exceptions

from ..build import RegistryError, _split
from ..errors import Nb2svcError
from ..image import connect
from .labels import ImageInfo


class ImageNotInRegistry(Nb2svcError):
    """The reference names no image the registry holds (exit 1: the reference is wrong)."""


def read_image(ref: str, client: Any = None) -> ImageInfo:
    client = client or connect()
    repository, tag = _split(ref)
    try:
        image = client.images.pull(repository, tag=tag)
    except docker.errors.NotFound as e:
        raise ImageNotInRegistry(
            f"{ref} is not in its registry: {e.explanation or e}",
            "check the name and tag (`nb2svc models REGISTRY/REPO` lists what is there)",
        ) from e
    except (docker.errors.APIError, requests.exceptions.ConnectionError) as e:
        raise RegistryError(f"pulling {ref} failed: {getattr(e, 'explanation', None) or e}") from e
    digests = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(f"{repository}@")]
    return ImageInfo.from_labels(ref, image.labels, digests[0].split("@", 1)[1] if digests else None)
