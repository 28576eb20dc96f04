"""One Azure Storage account for queues, tables and blobs, by connection string or identity.

Locally `AzureWebJobsStorage` is Azurite's connection string. In Azure it is identity-based: the
host reads `AzureWebJobsStorage__queueServiceUri` (etc.) or `__accountName`, with
`__credential=managedidentity` and `__clientId`; the same settings give our SDK clients a
`ManagedIdentityCredential` (or `DefaultAzureCredential`), so the code is the same in both places.
All clients are the async (aio) ones and are created lazily, once per worker.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from azure.core.exceptions import ResourceExistsError

from .storage_ops import COUNTS, OpCounter

_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + _DEV_KEY + ";"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


BLOB_BLOCK_BYTES = 4 * 1024 * 1024
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def transport_options() -> dict[str, Any]:
    """Keyword arguments for every Storage client: without a proxy in the environment, aiohttp's
    `trust_env` is off, so it does not look for proxies and ~/.netrc on each request (in a thread:
    ~15% of a worker's CPU per mail in bench/pipeline.py). With a proxy set, the SDK's default."""
    return {} if any(os.environ.get(v) for v in _PROXY_VARIABLES) else {"use_env_settings": False}


def expand_connection(connection: str) -> str:
    """`UseDevelopmentStorage=true` -> Azurite's full connection string (not every Python SDK parses it)."""
    if connection.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        return DEV_CONNECTION
    return connection


class StorageAccount:
    """`ops` counts every request its clients send, by kind (shared/adapters/storage_ops.py): the
    process's counter unless a test gives one of its own."""

    def __init__(self, connection: str, env: Mapping[str, str], prefix: str = "AzureWebJobsStorage",
                 ops: OpCounter | None = None) -> None:
        self._connection = expand_connection(connection) if connection else ""
        self.ops = ops if ops is not None else COUNTS
        self._env = env
        self._prefix = prefix
        self._credential: Any = None
        self._tables: Any = None
        self._table_clients: dict[str, Any] = {}
        self._blobs: Any = None
        self._queues: dict[str, Any] = {}

    # identity-based ------------------------------------------------------------------------
    def _service_uri(self, kind: str) -> str:
        uri = self._env.get(f"{self._prefix}__{kind}ServiceUri")
        if uri:
            return uri
        account = self._env.get(f"{self._prefix}__accountName")
        if not account:
            raise RuntimeError(f"{self._prefix} is not set and neither {self._prefix}__{kind}ServiceUri nor "
                               f"{self._prefix}__accountName is")
        return f"https://{account}.{kind}.core.windows.net"

    def _get_credential(self) -> Any:
        if self._credential is None:
            client_id = self._env.get(f"{self._prefix}__clientId") or None
            if (self._env.get(f"{self._prefix}__credential") or "").lower() == "managedidentity":
                from azure.identity.aio import ManagedIdentityCredential
                self._credential = ManagedIdentityCredential(client_id=client_id)
            else:
                from azure.identity.aio import DefaultAzureCredential
                self._credential = DefaultAzureCredential(managed_identity_client_id=client_id)
        return self._credential

    # clients ---------------------------------------------------------------------------------
    def _options(self, service: str) -> dict[str, Any]:
        return {**transport_options(), "raw_request_hook": self.ops.hook(service)}

    def table_service(self) -> Any:
        if self._tables is None:
            from azure.data.tables.aio import TableServiceClient
            if self._connection:
                self._tables = TableServiceClient.from_connection_string(self._connection, **self._options("table"))
            else:
                self._tables = TableServiceClient(self._service_uri("table"), credential=self._get_credential(),
                                                  **self._options("table"))
        return self._tables

    def table(self, name: str) -> Any:
        """One TableClient per table, sharing the service's pipeline (building one per call cost
        ~4% of a worker's CPU per mail in bench/pipeline.py)."""
        client = self._table_clients.get(name)
        if client is None:
            client = self._table_clients[name] = self.table_service().get_table_client(name)
        return client

    def blob_service(self) -> Any:
        if self._blobs is None:
            from azure.storage.blob.aio import BlobServiceClient
            # Uploads over 4 MiB go up in 4 MiB blocks: the SDK's default (one Put Blob up to 64 MiB)
            # reads a whole attachment into memory, and copies it, however it was streamed to us.
            options = dict(max_single_put_size=BLOB_BLOCK_BYTES, max_block_size=BLOB_BLOCK_BYTES,
                           **self._options("blob"))
            if self._connection:
                self._blobs = BlobServiceClient.from_connection_string(self._connection, **options)
            else:
                self._blobs = BlobServiceClient(self._service_uri("blob"), credential=self._get_credential(),
                                                **options)
        return self._blobs

    def queue(self, name: str) -> Any:
        client = self._queues.get(name)
        if client is None:
            from azure.storage.queue import BinaryBase64DecodePolicy, TextBase64EncodePolicy
            from azure.storage.queue.aio import QueueClient
            policies = dict(message_encode_policy=TextBase64EncodePolicy(),
                            message_decode_policy=BinaryBase64DecodePolicy(), **self._options("queue"))
            if self._connection:
                client = QueueClient.from_connection_string(self._connection, name, **policies)
            else:
                client = QueueClient(self._service_uri("queue"), name, credential=self._get_credential(), **policies)
            self._queues[name] = client
        return client

    async def ensure_tables(self, *names: str) -> None:
        service = self.table_service()
        for name in names:
            try:
                await service.create_table(name)
            except ResourceExistsError:
                pass

    async def ensure_queues(self, *names: str) -> None:
        for name in names:
            try:
                await self.queue(name).create_queue()
            except ResourceExistsError:
                pass

    async def ensure_container(self, name: str) -> None:
        try:
            await self.blob_service().create_container(name)
        except ResourceExistsError:
            pass

    async def close(self) -> None:
        for client in [self._tables, self._blobs, *self._queues.values(), self._credential]:
            if client is not None:
                await client.close()
        self._tables = self._blobs = self._credential = None
        self._table_clients = {}
        self._queues = {}


class TableStore:
    """Base of the adapters that keep their rows in one table: `_account` and `table_name` set by
    the subclass; `_table` is the account's (shared, cached) client for it."""
    _account: StorageAccount
    table_name: str

    @property
    def _table(self) -> Any:
        return self._account.table(self.table_name)
