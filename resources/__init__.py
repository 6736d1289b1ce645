"""One ConfigurableResource per external thing, each built from the validated settings."""

from resources.catalog import CatalogResource
from resources.downloader import Img2DatasetResource
from resources.laion_sources import LaionSourcesResource
from resources.storage import StorageResource

__all__ = ["CatalogResource", "Img2DatasetResource", "LaionSourcesResource", "StorageResource"]
