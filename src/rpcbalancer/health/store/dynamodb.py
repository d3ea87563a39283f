"""DynamoDB: the store of the Lambda deployment.

``dynamodb://TABLE?region=eu-west-1`` (``&endpoint=http://...`` for a local emulator). One
table, keys ``pk`` (partition) and ``sk`` (sort):

* ``pk = "latest"``, ``sk = node URL``: the latest record, replaced only by a newer one
  (a conditional write);
* ``pk = "history"``, ``sk = time#node#token``: the history, one partition ordered by time
  (a few records per node per minute), with a TTL attribute so DynamoDB expires it;
* ``pk = "lease"``, ``sk = name``: the canary lease, taken by a conditional write that
  succeeds only when the lease is free, expired, or already ours.

boto3 is synchronous: calls run in worker threads. The table is created when missing (in
a deployment the template creates it).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from ...errors import ConfigError
from .base import ProbeRecord

T = TypeVar("T")


def _sort_time(at: float) -> str:
    return f"{at:017.6f}"  # fixed width: string order is time order


class DynamoStore:
    def __init__(self, url: str, *, retention: float = 86400.0) -> None:
        self.url = url
        parts = urlsplit(url)
        if not parts.netloc:
            raise ConfigError(f"store: {url!r} names no table (dynamodb://TABLE?region=...)")
        self.table_name = parts.netloc
        query = parse_qs(parts.query)
        self.region = query.get("region", [None])[0]
        self.endpoint = query.get("endpoint", [None])[0]
        self.retention = retention
        self._table: Any = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"<DynamoStore {self.table_name}>"

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.to_thread(work)

    async def open(self) -> None:
        try:
            import boto3  # an optional dependency (present in the Lambda runtime)
            from botocore.config import Config as BotoConfig
        except ImportError:
            raise ConfigError(
                "store: dynamodb:// needs boto3: pip install 'rpcbalancer[aws]'"
            ) from None

        def connect() -> None:
            config = BotoConfig(connect_timeout=2, read_timeout=3, retries={"max_attempts": 2})
            resource = boto3.resource(
                "dynamodb", region_name=self.region, endpoint_url=self.endpoint, config=config
            )
            client = resource.meta.client
            try:
                client.describe_table(TableName=self.table_name)
            except client.exceptions.ResourceNotFoundException:
                with contextlib.suppress(client.exceptions.ResourceInUseException):
                    # (another process may create it meanwhile)
                    client.create_table(
                        TableName=self.table_name,
                        KeySchema=[
                            {"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "sk", "KeyType": "RANGE"},
                        ],
                        AttributeDefinitions=[
                            {"AttributeName": "pk", "AttributeType": "S"},
                            {"AttributeName": "sk", "AttributeType": "S"},
                        ],
                        BillingMode="PAY_PER_REQUEST",
                    )
                client.get_waiter("table_exists").wait(TableName=self.table_name)
                client.update_time_to_live(
                    TableName=self.table_name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"},
                )
            self._client = client
            self._table = resource.Table(self.table_name)

        if self._table is None:
            await self._run(connect)

    async def close(self) -> None:
        self._table = None
        self._client = None

    async def write(self, records: Sequence[ProbeRecord]) -> None:
        def put() -> None:
            conflict = self._client.exceptions.ConditionalCheckFailedException
            with self._table.batch_writer() as batch:
                for record in records:
                    batch.put_item(
                        Item={
                            "pk": "history",
                            "sk": f"{_sort_time(record.at)}#{record.node}#{secrets.token_hex(3)}",
                            "record": record.to_json().decode(),
                            "expires": int(record.at + self.retention),
                        }
                    )
            for record in records:
                with contextlib.suppress(conflict):  # a newer record is already there
                    self._table.put_item(
                        Item={
                            "pk": "latest",
                            "sk": record.node,
                            "at": _sort_time(record.at),
                            "record": record.to_json().decode(),
                        },
                        ConditionExpression="attribute_not_exists(pk) OR #at <= :at",
                        ExpressionAttributeNames={"#at": "at"},
                        ExpressionAttributeValues={":at": _sort_time(record.at)},
                    )

        await self._run(put)

    def _query(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._table.query(**kwargs)
            items += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def latest(self) -> dict[str, ProbeRecord]:
        from boto3.dynamodb.conditions import Key

        items = await self._run(lambda: self._query(KeyConditionExpression=Key("pk").eq("latest")))
        records = (ProbeRecord.from_json(item["record"]) for item in items)
        return {r.node: r for r in records}

    async def history(self, since: float, node: str | None = None) -> list[ProbeRecord]:
        from boto3.dynamodb.conditions import Key

        condition = Key("pk").eq("history") & Key("sk").gte(_sort_time(since))
        items = await self._run(lambda: self._query(KeyConditionExpression=condition))
        records = [ProbeRecord.from_json(item["record"]) for item in items]
        return [r for r in records if node is None or r.node == node]

    async def prune(self, before: float) -> int:
        from boto3.dynamodb.conditions import Key

        def delete() -> int:
            condition = Key("pk").eq("history") & Key("sk").lt(_sort_time(before))
            items = self._query(KeyConditionExpression=condition, ProjectionExpression="pk, sk")
            with self._table.batch_writer() as batch:
                for item in items:
                    batch.delete_item(Key={"pk": item["pk"], "sk": item["sk"]})
            return len(items)

        return await self._run(delete)

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        def take() -> bool:
            now = time.time()
            try:
                self._table.put_item(
                    Item={
                        "pk": "lease",
                        "sk": name,
                        "owner": owner,
                        "until": _sort_time(now + ttl),
                        "expires": int(now + ttl + 3600),
                    },
                    ConditionExpression="attribute_not_exists(pk) OR #until < :now OR #owner = :me",
                    ExpressionAttributeNames={"#until": "until", "#owner": "owner"},
                    ExpressionAttributeValues={":now": _sort_time(now), ":me": owner},
                )
            except self._client.exceptions.ConditionalCheckFailedException:
                return False
            return True

        return await self._run(take)

    async def release(self, name: str, owner: str) -> None:
        def give_back() -> None:
            with contextlib.suppress(self._client.exceptions.ConditionalCheckFailedException):
                self._table.delete_item(
                    Key={"pk": "lease", "sk": name},
                    ConditionExpression="#owner = :me",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":me": owner},
                )

        await self._run(give_back)
