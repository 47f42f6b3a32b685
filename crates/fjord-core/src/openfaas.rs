//! The OpenFaaS REST API's JSON types, with the exact field names faas-cli and the go-sdk use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Body of `POST`/`PUT /system/functions`. Only `service` and `image` are required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    /// The function's name: a DNS-1123 label.
    #[schema(
        pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length = 63,
        example = "hello"
    )]
    pub service: String,
    /// Stored and shown; a bundle tag or digest the gateway has runs that bundle.
    #[schema(min_length = 1, example = "hello:latest")]
    pub image: String,
    /// Default `openfaas-fn`; any DNS-1123 label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63)]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    /// Deprecated in OpenFaaS; accepted and ignored.
    #[serde(default, skip_serializing)]
    pub registry_auth: Option<String>,
    /// Deprecated in OpenFaaS; accepted and ignored.
    #[serde(default, skip_serializing)]
    pub network: Option<String>,
}

/// `limits` / `requests`: Kubernetes quantities as strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(
        rename = "nvidia.com/gpu",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub nvidia_gpu: Option<String>,
    #[serde(
        rename = "amd.com/gpu",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub amd_gpu: Option<String>,
    #[serde(
        rename = "intel.com/gpu",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub intel_gpu: Option<String>,
}

/// One entry of `GET /system/functions`, or the body of `GET /system/function/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    pub image: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    #[serde(default)]
    pub invocation_count: f64,
    /// Desired replicas.
    #[serde(default)]
    pub replicas: u64,
    /// Ready replicas.
    #[serde(default)]
    pub available_replicas: u64,
    /// RFC 3339.
    pub created_at: String,
    /// fjord's own status details; OpenFaaS clients ignore unknown fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fjord: Option<FjordStatus>,
}

/// fjord's extras on a function's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FjordStatus {
    /// Where the replicas run: `process` (sandboxed processes on this host, for bundles
    /// and `envProcess` commands) or `container` (OCI containers of the image, run by runc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// `http` (long-running replicas) or `fork` (a process per request).
    pub mode: String,
    /// Replica restarts since the function was deployed or fjord started.
    pub restarts: u64,
    /// Replicas killed by the kernel for exceeding `limits.memory`.
    pub oom_kills: u64,
    /// The memory limit enforced: `limits.memory`, else the server's
    /// `--default-memory-limit` (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// The last rollout or replica error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339 time of the last successful deploy or update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Requests that waited for a replica to start.
    #[serde(default)]
    pub cold_starts: u64,
    /// Why the replica count last changed (autoscaler, idler, scale from zero, API, alert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// The bundle, or the container image's manifest, the serving version runs, pinned when
    /// it was deployed (`image` stays the reference as given): restarts, rollbacks and
    /// scale-ups run exactly this. Absent when the function runs no bundle or image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub digest: Option<String>,
    /// While a deploy or update waits for its container image: how far the pull has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullStatus>,
    /// The latest deploy or update and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// What invokes the function besides HTTP: its cron schedule, NATS subjects and MQTT
    /// topics (see docs/connectors.md), each with its last and next run. Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Vec<TriggerStatus>>,
    /// Content trust: how the serving version was verified (`--trust-policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustStatus>,
}

/// `fjord.triggers[]`: one connector source of a function (a schedule, a subject, a topic).
/// A function's verification under the server's trust policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustStatus {
    /// `verified` (signed by a trusted key), `unsigned-allowed` (no policy, or the
    /// namespace allows unsigned code) or `refused` (the policy refuses it: not running).
    pub state: String,
    /// The id of the key that signed it (`verified`): the first 8 bytes of the SHA-256 of
    /// its PKIX encoding, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Why it is refused (`refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// `cron`, `nats` or `mqtt`.
    #[schema(example = "cron")]
    pub kind: String,
    /// The schedule (with its timezone), the NATS subject or the MQTT topic filter.
    #[schema(example = "*/5 * * * * (UTC)")]
    pub source: String,
    /// RFC 3339 time the function was last invoked by this trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// RFC 3339 time of the next scheduled run (cron only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<String>,
    /// How the last run ended: `ok`, `failed: …` (the status or error) or `skipped: …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    /// Invocations that answered 2xx.
    pub fired: u64,
    /// Invocations that failed (non-2xx, or no answer).
    pub failed: u64,
    /// Runs not made because the previous run was still going (cron; a run another server
    /// sharing the NATS queue took is not counted here).
    pub skipped: u64,
    /// Subscribed or scheduled now (false while the broker is unreachable).
    #[serde(default)]
    pub active: bool,
    /// Messages waiting in the JetStream consumer (NATS subjects a stream captures), as of
    /// the last delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// `fjord.pull`: a container image being pulled for a deploy or update (the call answers
/// once the image is unpacked).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PullStatus {
    /// The image reference as deployed.
    pub image: String,
    /// Layers of the image (0 until its manifest is read), and how many are unpacked (or
    /// were already in the store).
    pub layers: u64,
    pub layers_done: u64,
    /// Compressed bytes downloaded, of the layers' sizes known so far.
    pub bytes: u64,
    pub total_bytes: u64,
    /// Seconds since the pull started.
    pub seconds: f64,
}

/// `fjord.rollout`: the latest deploy or update of a function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Counts this function's deploys since the server started; `POST`/`PUT
    /// /system/functions` answer with it in the `X-Fjord-Generation` header.
    pub generation: u64,
    /// `progressing`, `ready` (all its replicas were ready and it took the traffic),
    /// `failed` (an update was rolled back; a first deploy keeps retrying), or `pulling` (a
    /// new function whose first deploy waits for its image; see `pull`).
    #[schema(example = "ready")]
    pub state: String,
    /// Replicas of this version, and how many of them are ready.
    pub replicas: u64,
    pub ready_replicas: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The replica that failed (its log lines carry this `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_replica: Option<String>,
}

/// Body of `POST /system/scale-function/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleServiceRequest {
    /// If not empty, the function in the path.
    #[serde(default)]
    #[schema(pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63)]
    pub service_name: String,
    /// Clamped to `com.openfaas.scale.max`; 0 allowed.
    pub replicas: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63)]
    pub namespace: Option<String>,
}

/// Body of `DELETE /system/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFunctionRequest {
    #[schema(
        pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length = 63,
        example = "hello"
    )]
    pub function_name: String,
    /// Default: the `namespace` query parameter, else `openfaas-fn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63)]
    pub namespace: Option<String>,
}

/// `GET /system/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GatewayInfo {
    pub provider: ProviderInfo,
    pub version: VersionInfo,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderInfo {
    pub provider: String,
    pub orchestration: String,
    pub version: VersionInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<String>,
    pub sha: String,
    pub release: String,
}

/// One line of `GET /system/logs` (NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogMessage {
    pub name: String,
    pub namespace: String,
    pub instance: String,
    /// RFC 3339 with nanoseconds.
    pub timestamp: String,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_deployment_decodes() {
        let d: FunctionDeployment =
            serde_json::from_str(r#"{"service":"figlet","image":"alexellis2/figlet"}"#).unwrap();
        assert_eq!(d.service, "figlet");
        assert!(d.labels.is_none());
    }

    #[test]
    fn nullable_maps_and_deprecated_fields_are_accepted() {
        let d: FunctionDeployment = serde_json::from_str(
            r#"{"service":"a","image":"b","labels":null,"annotations":null,"registryAuth":"x","network":"func_functions","readOnlyRootFilesystem":true,
                "limits":{"memory":"128Mi","cpu":"100m","nvidia.com/gpu":"1"}}"#,
        )
        .unwrap();
        assert!(d.read_only_root_filesystem);
        assert_eq!(d.limits.unwrap().nvidia_gpu.as_deref(), Some("1"));
        let back = serde_json::to_value(FunctionDeployment {
            registry_auth: Some("secret".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(back.get("registryAuth").is_none());
    }
}

/// Body of `POST`/`PUT /system/secrets` (and, with only `name`/`namespace`, of `DELETE`).
/// `value` is text; `rawValue` is base64 (Go's `[]byte`), used when `value` is empty.
/// `Debug` never shows the value.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// One entry of `GET /system/secrets`: never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretDescription {
    pub name: String,
    pub namespace: String,
}

/// A namespace with its labels and annotations: body of `POST`/`PUT
/// /system/namespace/{name}` and answer of `GET` (OpenFaaS's `FunctionNamespace`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionNamespace {
    /// A DNS-1123 label; in a request body it may be left out (the path names it) but must
    /// match the path when given.
    #[serde(default)]
    #[schema(example = "team-a")]
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}
