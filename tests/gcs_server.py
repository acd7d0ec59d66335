"""A GCS server on 127.0.0.1 for tests: gcp-storage-emulator (the JSON and upload APIs over real HTTP, objects in
memory) with two things real GCS has and the emulator lacks:

* the ``x-goog-generation`` header on media downloads: tensorstore (Orbax's array writer) reads it to know which
  version of the OCDBT manifest it read; without it a second checkpoint fails ("Malformed StorageGeneration");
* the ``moveTo`` object call gcsfs renames with: without it each object's move waits out gcsfs's retries (501)
  before falling back to copy + delete, ~1 s per object.

    python -m tests.gcs_server PORT BUCKET
"""

from __future__ import annotations

import json
import sys
import time
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])


def move(request, response, storage, *args, **kwargs):
    """POST /storage/v1/b/{bucket}/o/{object}/moveTo/o/{destination}: rename within the bucket."""
    request.params["dest_bucket_name"] = request.params["bucket_name"]
    objects.rewrite(request, response, storage, *args, **kwargs)
    if response.status == HTTPStatus.OK:
        objects._delete(storage, request.params["bucket_name"], request.params["object_id"])
        response.json(json.loads(response._content)["resource"])


objects.download = download  # before the server module builds its routes from it


def main(port: int, bucket: str) -> None:
    from gcp_storage_emulator import server as emulator

    moves = tuple((rf"^{prefix}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
                   {"POST": move}) for prefix in ("/storage/v1", ""))
    emulator.HANDLERS = moves + tuple(emulator.HANDLERS)
    create_server = emulator.create_server

    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
