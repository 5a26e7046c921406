"""`--print_athena_ddl`: a CREATE EXTERNAL TABLE over what the forwarder writes.

    python -m pipeline --s3_bucket_name=acme --folder_name=mparticle \
        --store_data_in_folders_by_date=event_time --print_athena_ddl

One row per forwarded batch (the files are NDJSON, gzipped or not: the JSON SerDe
reads both by extension), with the batch's fields and their types: int64 ids and
timestamps as bigint (the SerDe reads numbers and strings of digits alike),
`events` as an array of structs, identities in the outbound form. With date
folders on, the table is partitioned by them through partition projection, so no
partition ever needs adding. Fields not listed here are skipped by the SerDe.

With `--output_format=parquet`: one row per event, the columns of
`parquet_rows.SCHEMA` (typed ids, times and names; free-form parts as JSON text,
read with `json_extract`), STORED AS PARQUET, partitioned the same way.
"""

from __future__ import annotations

from transforms.rules import naming, parquet_rows
from transforms.rules.naming import DateFolders

_LOCATION = "struct<latitude:double,longitude:double,accuracy:double>"
_CONSENT = ("map<string,struct<consented:boolean,document:string,timestamp_unixtime_ms:bigint,"
            "location:string,hardware_id:string>>")
_EVENT_DATA = (
    "struct<event_id:bigint,source_message_id:string,session_id:bigint,session_uuid:string,"
    "session_start_unixtime_ms:bigint,timestamp_unixtime_ms:bigint,event_start_unixtime_ms:bigint,"
    "event_name:string,custom_event_type:string,screen_name:string,"
    "custom_attributes:map<string,string>,custom_flags:map<string,string>,"
    f"location:{_LOCATION},"
    "product_action:struct<action:string,transaction_id:string,total_amount:double,"
    "products:array<struct<id:string,name:string,price:double,quantity:double>>>,"
    "application_transition_type:string,push_message_type:string,push_token:string,"
    "session_duration_ms:bigint,exception_name:string,url:string,http_verb:string,"
    "response_code:bigint,time_elapsed:bigint>"
)
# Column → Hive type, in the order mParticle's batches hold them.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("events", f"array<struct<event_type:string,data:{_EVENT_DATA}>>"),
    ("device_info", "struct<platform:string,os_version:string,device:string,device_model:string,"
     "device_manufacturer:string,brand:string,product:string,locale_country:string,"
     "locale_language:string,network_carrier:string,network_country:string,"
     "timezone_offset:bigint,is_tablet:boolean,screen_height:bigint,screen_width:bigint,"
     "ios_idfv:string,ios_advertising_id:string,android_uuid:string,"
     "android_advertising_id:string,limit_ad_tracking:boolean,http_header_user_agent:string,"
     "push_token:string,build_identifier:string>"),
    ("application_info", "struct<application_name:string,application_version:string,"
     "application_build_number:string,package:string,os:string>"),
    ("user_attributes", "map<string,string>"),
    ("deleted_user_attributes", "array<string>"),
    ("user_identities", "array<struct<identity_type:string,identity:string,"
     "timestamp_unixtime_ms:bigint,created_this_batch:boolean>>"),
    ("consent_state", f"struct<gdpr:{_CONSENT},ccpa:{_CONSENT}>"),
    ("source_info", "struct<channel:string,is_historical:boolean,partner:string>"),
    ("context", f"struct<location:{_LOCATION},"
     "data_plan:struct<plan_id:string,plan_version:bigint>>"),
    ("environment", "string"),
    ("ip", "string"),
    ("sdk_version", "string"),
    ("schema_version", "bigint"),
    ("api_key", "string"),
    ("batch_id", "bigint"),
    ("mpid", "bigint"),
    ("mp_deviceid", "string"),
    ("timestamp_unixtime_ms", "bigint"),
    ("unique_id", "string"),
)
PARTITION = "dt"


def ddl_text(
    bucket: str, folder: str | None, date_folders: DateFolders,
    table: str = "mparticle_events", parquet: bool = False,
) -> str:
    """The CREATE EXTERNAL TABLE statement for this bucket, folder and date folders;
    `parquet`: over the Parquet files (one row per event, `parquet_rows.SCHEMA`)."""
    location = f"s3://{naming.join_key(bucket, folder)}/"
    kinds = parquet_rows.hive_columns() if parquet else COLUMNS
    columns = ",\n".join(f"  `{name}` {kind}" for name, kind in kinds)
    lines = [f"CREATE EXTERNAL TABLE IF NOT EXISTS `{table}` (", columns, ")"]
    if date_folders is not DateFolders.NONE:
        lines.append(f"PARTITIONED BY (`{PARTITION}` string)")
    if parquet:
        lines.append("STORED AS PARQUET")
    else:
        lines += [
            "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'",
            "WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')",
            "STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'",
            "OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'",
        ]
    lines.append(f"LOCATION '{location}'")
    if date_folders is not DateFolders.NONE:
        lines += [
            "TBLPROPERTIES (",
            "  'projection.enabled' = 'true',",
            f"  'projection.{PARTITION}.type' = 'date',",
            f"  'projection.{PARTITION}.format' = 'yyyy-MM-dd',",
            f"  'projection.{PARTITION}.range' = '2000-01-01,NOW',",
            f"  'projection.{PARTITION}.interval' = '1',",
            f"  'projection.{PARTITION}.interval.unit' = 'DAYS',",
            f"  'storage.location.template' = '{location}${{{PARTITION}}}/'",
            ")",
        ]
    return "\n".join(lines) + ";"
