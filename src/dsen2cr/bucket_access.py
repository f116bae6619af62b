"""How the catalogues' S3 buckets are reached through GDAL's ``/vsis3/``, said where a read of one failed: the
Copernicus Data Space Ecosystem's ``eodata`` (its STAC items' hrefs: its own endpoint and S3 keys) and the
Sentinel buckets on AWS that bill the requester (Earth Search's Level-1C items)."""

from __future__ import annotations

import os

#: The Copernicus Data Space Ecosystem's S3 endpoint, which serves its ``eodata`` bucket.
CDSE_ENDPOINT = "eodata.dataspace.copernicus.eu"
#: Sentinel buckets on AWS whose reads are billed to the requester (they refuse a read that does not say it pays).
REQUESTER_PAYS_BUCKETS = ("sentinel-s2-l1c", "sentinel-s2-l2a", "sentinel-s1-l1c")


def bucket_hint(gdal_path: str) -> str:
    """What a failed read of ``gdal_path`` likely lacks, as a clause to end its line with (``"; …"``), where the path
    is in a bucket this module knows and the environment does not set what it needs; else ``""``."""
    if not gdal_path.startswith("/vsis3/"):
        return ""
    bucket = gdal_path.removeprefix("/vsis3/").split("/", 1)[0]
    if bucket == "eodata" and not os.environ.get("AWS_S3_ENDPOINT"):
        return (
            f"; eodata is the Copernicus Data Space Ecosystem's bucket: set AWS_S3_ENDPOINT={CDSE_ENDPOINT}, "
            "AWS_VIRTUAL_HOSTING=FALSE and its S3 keys as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the Copernicus "
            "Data Space's S3 credentials)"
        )
    if bucket in REQUESTER_PAYS_BUCKETS and os.environ.get("AWS_REQUEST_PAYER", "").lower() != "requester":
        return (
            f"; {bucket} bills the requester: set AWS_REQUEST_PAYER=requester and your AWS credentials (the reads are "
            "billed to your account)"
        )
    return ""
