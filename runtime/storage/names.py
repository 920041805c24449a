"""The names a model pull shares with whoever runs it (the local platform, the Pod manifest, the
replica's metrics): the AWS_* variables it reads and the variable that hands the replica its report."""

# The variables read for s3:// (the AWS SDKs' own names, as KServe's storage initializer reads them too).
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SETTING_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE")
ENV_KEYS = CREDENTIAL_KEYS + SETTING_KEYS

# The pull's report (JSON: uri, identity, bytes, cache hit|miss, seconds), or the path of a file holding it.
PULL_REPORT_ENV = "ELASTICSERVING_MODEL_PULL"
