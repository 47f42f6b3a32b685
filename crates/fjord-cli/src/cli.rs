//! The command line: every command, flag and its help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_CODES_HELP;

#[derive(Parser)]
#[command(
    name = "fjord",
    version,
    about = "Self-hosted serverless functions in one binary, compatible with OpenFaaS",
    long_about = "fjord runs functions-as-a-service on one machine with nothing else installed: \
an HTTP gateway with the OpenFaaS REST API, a sandboxed process runtime, logs and auth.\n\n\
Start the platform with `fjord serve`; create a function with `fjord new`, then `fjord up`.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where `fjord serve` runs functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// This machine: sandboxed processes, and containers as --containers says.
    Local,
    /// Pods on a Kubernetes cluster.
    Kubernetes,
}

/// Where the gateway is.
#[derive(Args, Clone, Default)]
pub struct GatewayArgs {
    /// Gateway URL [env: FJORD_URL, OPENFAAS_URL; default: the stack's provider.gateway, else http://127.0.0.1:8080]
    // Global: `fjord calls list -g URL` works as well as `fjord calls -g URL list`.
    #[arg(short = 'g', long = "gateway", global = true)]
    pub gateway: Option<String>,
    /// API token to send as `Authorization: Bearer` (instead of the admin password)
    #[arg(long, env = "FJORD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for an https gateway, e.g. a private CA's
    #[arg(long, env = "FJORD_CA_CERT", value_name = "PEM", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Accept any certificate of an https gateway (self-signed test setups only: anyone on
    /// the path could read the credentials)
    #[arg(long, env = "FJORD_TLS_NO_VERIFY", global = true)]
    pub tls_no_verify: bool,
}

/// Which stack file and which of its functions.
#[derive(Args, Clone)]
pub struct StackArgs {
    /// Stack file [default: stack.yaml or stack.yml]
    #[arg(short = 'f', long = "yaml", visible_alias = "file")]
    pub file: Option<PathBuf>,
    /// Only functions whose name matches this glob (`*` and `?`)
    #[arg(long)]
    pub filter: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the platform: gateway, runtime and state store
    #[command(
        after_help = "Examples:\n  fjord serve\n  fjord serve --listen 0.0.0.0:8080 --data-dir /var/lib/fjord\n  \
fjord serve --listen 0.0.0.0:8080 --ui-listen 127.0.0.1:8081   # dashboard on loopback only\n  \
RUST_LOG=debug fjord serve --log-format json"
    )]
    Serve(Box<ServeArgs>),
    /// Create a function from a template and add it to the stack file
    #[command(
        after_help = "Examples:\n  fjord new --list\n  fjord new hello --lang python3-http\n  fjord new resize --lang python3-http --append stack.yml --prefix ghcr.io/acme"
    )]
    New(NewArgs),
    /// Build functions into bundles, or OCI images with --image (no Docker needed)
    #[command(
        after_help = "Examples:\n  fjord build\n  fjord build --image                 # image: fields name the images, e.g. 127.0.0.1:5000/hello:1\n  fjord build --image --base-image 127.0.0.1:5000/python:3.11-slim"
    )]
    Build(BuildArgs),
    /// Upload built bundles to the gateway (skipped when it already has them), or with
    /// --image push built images to their registries (blobs the registry has are skipped)
    Push {
        #[command(flatten)]
        stack: StackArgs,
        /// Push the images of `fjord build --image` to the registries their `image:` names
        #[arg(long)]
        image: bool,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        sign: SignFlag,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Serve a function inside its image as the OpenFaaS watchdog does (the entrypoint of
    /// images built with --image; configured by fprocess, mode, port, upstream_url,
    /// exec_timeout, read_timeout, max_inflight in the environment)
    Watchdog,
    /// Deploy functions from the stack file, or one function from flags
    #[command(
        after_help = "Examples:\n  fjord deploy\n  fjord deploy --name env --image env --fprocess env\n  fjord deploy --name web --image web --fprocess 'python3 -m http.server' -e mode=http -e upstream_url=http://127.0.0.1:8000"
    )]
    Deploy(DeployArgs),
    /// Build, push and deploy: one command from source to a live function
    Up(UpArgs),
    /// Invoke a function with the request body from stdin
    #[command(
        after_help = "Examples:\n  echo hi | fjord invoke hello\n  fjord invoke hello -m GET --query name=Ada -H X-Trace=1 < /dev/null"
    )]
    Invoke(InvokeArgs),
    /// List deployed functions
    #[command(visible_alias = "ls")]
    List {
        /// Show image, available replicas and mode too
        #[arg(short, long)]
        verbose: bool,
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
        /// Namespace [default: openfaas-fn]
        #[arg(short, long)]
        namespace: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Show one function's status, spec and recent errors
    Describe {
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Remove functions (named, or every function of the stack file)
    #[command(visible_alias = "rm")]
    Remove {
        names: Vec<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        #[command(flatten)]
        stack: StackArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Show a function's logs
    Logs {
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Keep streaming new lines
        #[arg(long, visible_alias = "tail-follow")]
        follow: bool,
        /// Only lines newer than this (e.g. 10m, 1h30m)
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only the last N lines
        #[arg(long, visible_alias = "lines")]
        tail: Option<u64>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Set a function's replica count: 0 (the next call wakes it) up to its
    /// com.openfaas.scale.max (above is clamped; the count set is printed)
    #[command(after_help = "Examples:\n  fjord scale hello 3\n  fjord scale hello --replicas 0")]
    Scale {
        name: String,
        /// Replicas wanted (or --replicas)
        #[arg(
            value_name = "REPLICAS",
            required_unless_present = "replicas",
            conflicts_with = "replicas"
        )]
        count: Option<u64>,
        #[arg(long, short)]
        replicas: Option<u64>,
        #[arg(short, long)]
        namespace: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Save credentials for a gateway (mode 0600 in $XDG_CONFIG_HOME/fjord/config.json)
    #[command(
        after_help = "Examples:\n  fjord login --password-stdin < /var/lib/fjord/secrets/basic-auth-password\n  fjord login -g http://fjord.internal:8080 -u admin -p \"$PASSWORD\"\n  fjord login -g https://fjord.example.com --token - < token.txt"
    )]
    Login {
        #[arg(short, long, default_value = "admin")]
        username: String,
        /// The password (prefer --password-stdin: flags show up in `ps`)
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from stdin. To save an API token instead, use --token TOKEN
        /// (`--token -` reads it from stdin)
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Inspect and manage async calls: get, list, cancel, replay
    #[command(
        after_help = "Examples:\n  fjord invoke resize --async < photo.jpg\n  fjord calls get 3f2a…\n  fjord calls list --state dead\n  fjord calls replay 3f2a…\n  fjord calls cancel 3f2a…"
    )]
    Calls {
        #[command(subcommand)]
        action: CallsAction,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Manage function secrets: create, list, update, remove
    #[command(
        long_about = "Manage function secrets. A function lists the secrets it needs (`secrets:` in \
stack.yml, or `fjord deploy --secret NAME`) and reads each one from the file \
/var/openfaas/secrets/NAME. Values are encrypted at rest on the gateway and never shown again.",
        after_help = "Examples:\n  fjord secret create api-key --from-literal s3cr3t\n  \
fjord secret create db-password --from-file ./db.txt\n  \
printf %s \"$TOKEN\" | fjord secret create token\n  \
fjord secret list\n  \
fjord secret update api-key --from-literal n3w   # rolls the functions that use it\n  \
fjord secret remove api-key"
    )]
    Secret {
        #[command(subcommand)]
        action: SecretAction,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Manage namespaces: create, list, get, update, delete
    #[command(
        long_about = "Manage namespaces. Deploying into a namespace that does not exist yet creates it \
implicitly (it exists while it holds functions or secrets); create one explicitly to give it labels \
and annotations. A namespace is deleted only when it is empty.",
        after_help = "Examples:\n  fjord namespace create team-a --label env=dev --annotation owner=ada\n  \
fjord namespace list\n  \
fjord namespace get team-a\n  \
fjord namespace update team-a --label env=prod\n  \
fjord namespace delete team-a"
    )]
    #[command(visible_aliases = ["ns", "namespaces"])]
    Namespace {
        #[command(subcommand)]
        action: NamespaceAction,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Container images on the gateway (pulled for functions that run as containers)
    #[command(
        after_help = "Examples:\n  fjord images gc\n\nThe gateway also collects images after every delete and every update of a container function.",
        visible_alias = "image"
    )]
    Images {
        #[command(subcommand)]
        action: ImagesAction,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Manage API tokens (admin): create, list, revoke
    #[command(
        after_help = "Scopes: read (GET the API), deploy (read + deploy, update, remove, scale, bundles), admin (everything, tokens and secrets too), invoke (only call functions annotated com.fjord.auth=token).\n\nExamples:\n  fjord token create ci --scope deploy --expires 90d\n  fjord token list\n  fjord token revoke 3f2a9c0d1e2b4a5c"
    )]
    Token {
        #[command(subcommand)]
        action: TokenAction,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print fjord's version, and the gateway's when it can be reached
    Version {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Signing keys (cosign's key-pair format: the same keys work with cosign)
    #[command(
        after_help = "Examples:\n  fjord key generate                      # cosign.key (encrypted) + cosign.pub\n  FJORD_KEY_PASSWORD=... fjord key generate --output-key-prefix release\n\nThe passphrase comes from FJORD_KEY_PASSWORD (or COSIGN_PASSWORD), else a prompt."
    )]
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Sign an image in its registry as `cosign sign --key` does (the signature goes next
    /// to the image, over its manifest digest)
    #[command(
        after_help = "Examples:\n  fjord sign --key cosign.key 127.0.0.1:5000/hello@sha256:...\n  fjord sign --key cosign.key 127.0.0.1:5000/hello:1     # the digest the tag names now"
    )]
    Sign(SignArgs),
    /// Content trust on the gateway: which functions its --trust-policy refuses
    #[command(
        after_help = "Examples:\n  fjord trust check          # exit status 1 if any function is refused"
    )]
    Trust {
        #[command(subcommand)]
        action: TrustAction,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Subcommand)]
pub enum KeyAction {
    /// Write a new key pair: PREFIX.key (private, encrypted with a passphrase, mode 0600)
    /// and PREFIX.pub (public: give it to the gateway's --trust-policy)
    Generate {
        /// File name prefix
        #[arg(long, default_value = "cosign", value_name = "PREFIX")]
        output_key_prefix: PathBuf,
        /// Overwrite existing files
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum TrustAction {
    /// Check every deployed function against the gateway's trust policy (signatures read
    /// again) and list those it refuses
    Check {
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct SignArgs {
    /// The image: `registry/repo@sha256:...`, or a tag (signed at the digest it names now)
    pub image: String,
    /// The private key (cosign.key)
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `--sign KEY` on push and up.
#[derive(Args, Clone, Default)]
pub struct SignFlag {
    /// Sign what is pushed with this private key (cosign.key): images get a cosign
    /// signature in their registry, bundles a signature uploaded beside them
    /// (passphrase: FJORD_KEY_PASSWORD or COSIGN_PASSWORD, else a prompt)
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

/// Where a secret's value comes from: a flag, a file, else stdin.
#[derive(Args, Clone)]
pub struct SecretValueArgs {
    /// The value itself (it shows up in `ps` and shell history: prefer --from-file or stdin)
    #[arg(long, conflicts_with = "from_file", value_name = "VALUE")]
    pub from_literal: Option<String>,
    /// Read the value from this file (bytes as they are)
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Remove leading and trailing whitespace (such as the newline of `echo`) from the value
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub trim: bool,
}

#[derive(Subcommand)]
pub enum SecretAction {
    /// Create a secret (value from --from-literal, --from-file, or stdin)
    Create {
        name: String,
        #[command(flatten)]
        value: SecretValueArgs,
        /// Namespace [default: openfaas-fn]
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// List secret names (values are never shown)
    #[command(visible_alias = "ls")]
    List {
        /// Namespace [default: openfaas-fn]
        #[arg(short, long)]
        namespace: Option<String>,
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
    },
    /// Replace a secret's value; functions that use it restart with the new value
    Update {
        name: String,
        #[command(flatten)]
        value: SecretValueArgs,
        /// Namespace [default: openfaas-fn]
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Remove a secret (refused while a function uses it)
    #[command(visible_alias = "rm")]
    Remove {
        name: String,
        /// Namespace [default: openfaas-fn]
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ImagesAction {
    /// Remove the images and layers no deployed function uses; prints what was freed
    Gc,
}

#[derive(Subcommand)]
pub enum NamespaceAction {
    /// Create a namespace (admin)
    Create {
        name: String,
        /// A label, KEY=VALUE (repeatable) [default: none]
        #[arg(short, long, value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// An annotation, KEY=VALUE (repeatable) [default: none]
        #[arg(long, value_name = "KEY=VALUE")]
        annotation: Vec<String>,
    },
    /// List namespaces: created ones and those holding functions or secrets
    #[command(visible_alias = "ls")]
    List {
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
    },
    /// Show a namespace's labels and annotations
    Get {
        name: String,
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
    },
    /// Replace a namespace's labels and annotations (admin)
    Update {
        name: String,
        /// A label, KEY=VALUE (repeatable) [default: none]
        #[arg(short, long, value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// An annotation, KEY=VALUE (repeatable) [default: none]
        #[arg(long, value_name = "KEY=VALUE")]
        annotation: Vec<String>,
    },
    /// Delete an empty namespace (admin; refused while it holds functions or secrets)
    #[command(visible_alias = "rm")]
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Create a token and print it (it is shown only this once)
    Create {
        /// What the token is for, e.g. ci-deploy
        name: String,
        /// invoke, read, deploy or admin
        #[arg(long, value_parser = ["invoke", "read", "deploy", "admin"])]
        scope: String,
        /// Lifetime, e.g. 30d or 12h [default: never expires]
        #[arg(long)]
        expires: Option<String>,
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets)
    #[command(visible_alias = "ls")]
    List {
        /// Print the gateway's JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: it stops working at once
    #[command(visible_alias = "rm")]
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum CallsAction {
    /// Show a call's state, attempts, last status and callback outcome
    Get { id: String },
    /// List calls, newest first
    List {
        /// queued, running, retrying, done, dead or cancelled
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Cancel a call that has not started
    Cancel { id: String },
    /// Run a dead-lettered call again
    Replay { id: String },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port, written to <data-dir>/gateway.addr)
    #[arg(long, default_value = "127.0.0.1:8080", env = "FJORD_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the web dashboard (/ui/) and its browser sessions, on its own port so that
    /// functions' pages cannot reach it: `default` is the --listen address with port + 1 (a
    /// free port when --listen's port is 0 or that one is taken; the address is always
    /// written to <data-dir>/ui.addr); `off` disables the dashboard. Browsers opening /ui/ or
    /// / on --listen are redirected there
    #[arg(
        long,
        default_value = "default",
        env = "FJORD_UI_LISTEN",
        value_name = "ADDR|default|off"
    )]
    pub ui_listen: fjord_gateway::UiListen,
    /// Where functions, bundles, logs and credentials are kept [default: /var/lib/fjord as root, else $XDG_DATA_HOME/fjord (~/.local/share/fjord)]
    #[arg(long, env = "FJORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Require HTTP basic auth on /system/* (user admin; password generated into the data dir)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub auth: bool,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub shutdown_timeout: u64,
    /// Seconds an update may take to become ready before it is rolled back
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub rollout_timeout: u64,
    /// Seconds a request waits for a starting replica before a 503
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub ready_timeout: u64,
    /// Maximum processes per replica (cgroup pids limit; stops fork bombs)
    #[arg(long, default_value_t = 1024)]
    pub pids_max: u64,
    /// Size of each replica's /tmp, a tmpfs counted in the function's memory (writes beyond
    /// fail with ENOSPC); a function may set its own with the annotation com.fjord.tmp-size
    #[arg(long, default_value = "256Mi", value_parser = parse_tmp_size, value_name = "BYTES")]
    pub tmp_size: u64,
    /// Memory limit of functions that set no limits.memory, e.g. 512Mi (0 = unlimited)
    #[arg(long, default_value = "256Mi", value_parser = parse_memory_or_zero, value_name = "BYTES")]
    pub default_memory_limit: u64,
    /// As root, set /sys/kernel/rcu_expedited=1 while serving: cgroup moves, and so replica
    /// cold starts, get ~10 ms faster. Restored at shutdown
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub tune_kernel: bool,
    /// As root, each function runs in its own network namespace (its replicas are reachable
    /// only through the gateway). nat: outbound through NAT, with the host itself, other
    /// functions, loopback, link-local (cloud metadata), private and multicast networks
    /// blocked (needs nftables; without it, none); none: loopback only
    #[arg(long, default_value = "nat", value_name = "nat|none")]
    pub function_network: fjord_gateway::FunctionNetwork,
    /// Private, link-local or loopback networks functions may reach anyway (CIDRs or
    /// addresses, comma-separated or repeated), e.g. a database at 10.0.0.5
    #[arg(long, value_delimiter = ',', value_name = "CIDR", value_parser = parse_ipv4_net)]
    pub function_egress_allow: Vec<ipnet::Ipv4Net>,
    /// Addresses for the functions' veth links (a /30 each) [default: the first of
    /// 10.203.0.0/16, 10.204.0.0/16, ... not used on this host]
    #[arg(long, value_name = "CIDR")]
    pub function_subnet: Option<ipnet::Ipv4Net>,
    /// Longest a request may take when the function sets no exec_timeout (http mode: 504
    /// beyond). The one rule: a function's exec_timeout, else this
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub exec_timeout: std::time::Duration,
    /// Longest a client may take to send a request body, when the function sets no
    /// read_timeout (408 beyond; 0 = no limit)
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub read_timeout: std::time::Duration,
    /// Longest sending a response body may take, when the function sets no write_timeout
    /// (the connection is cut beyond; 0 = no limit, right for long streams)
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub write_timeout: std::time::Duration,
    /// Longest a client may take to send a request's headers (HTTP/1; the connection is
    /// closed beyond), and the longest an idle keep-alive connection stays open; 0 = no limit
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// Largest body of an async call (POST /async-function/...; 413 beyond)
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub max_async_body: u64,
    /// HTTP method of queued calls when they run: `original`, or `post` as OpenFaaS's queue
    /// worker always does
    #[arg(long, default_value = "original", value_parser = ["original", "post"])]
    pub async_method: String,
    /// Where async calls are queued: `embedded` (<data-dir>/queue.db, fsync before 202) or a
    /// NATS JetStream server, e.g. nats://user:password@127.0.0.1:4222 (or nats://TOKEN@...),
    /// which several fjord servers can share (each runs the calls of the functions it has
    /// deployed). Put credentials in FJORD_QUEUE, not on the command line (which other local
    /// users can read)
    #[arg(long, env = "FJORD_QUEUE", hide_env_values = true, default_value = "embedded",
          value_name = "embedded|nats://HOST:PORT",
          value_parser = |s: &str| fjord_gateway::QueueBackend::parse(s))]
    pub queue: fjord_gateway::QueueBackend,
    /// Connector: subscribe to the NATS subjects in functions' `topic` annotations on this
    /// server (nats://HOST:PORT; the queue's server or another; --nats-* settings apply)
    #[arg(long = "nats", env = "FJORD_NATS", hide_env_values = true, value_name = "nats://HOST:PORT",
          value_parser = |s: &str| fjord_gateway::connectors::parse_nats_url(s))]
    pub nats_connector: Option<String>,
    /// Connector: subscribe to the MQTT topic filters in functions' `topic` annotations on
    /// this broker (mqtt://[user:password@]HOST:PORT, or mqtts://… for TLS; QoS 1,
    /// persistent session)
    #[arg(long, env = "FJORD_MQTT", hide_env_values = true, value_name = "mqtt://HOST:PORT",
          value_parser = |s: &str| fjord_gateway::connectors::mqtt::parse_url(s))]
    pub mqtt: Option<String>,
    /// MQTT: trust the broker certificate signed by these CA certificates (PEM) instead of
    /// the system's roots; implies TLS
    #[arg(long, value_name = "PEM", requires = "mqtt")]
    pub mqtt_ca: Option<PathBuf>,
    /// MQTT: authenticate to the broker with this client certificate chain (PEM; with
    /// --mqtt-key); implies TLS
    #[arg(long, value_name = "PEM", requires_all = ["mqtt", "mqtt_key"])]
    pub mqtt_cert: Option<PathBuf>,
    /// MQTT: the private key (PEM) of --mqtt-cert
    #[arg(long, value_name = "PEM", requires = "mqtt_cert")]
    pub mqtt_key: Option<PathBuf>,
    /// MQTT: the protocol version, 3.1.1 or 5 (MQTT 5: servers on one broker share each
    /// function's messages through shared subscriptions; messages naming a response topic
    /// get the function's answer there)
    #[arg(long, env = "FJORD_MQTT_VERSION", value_name = "3.1.1|5", default_value = "3.1.1",
          requires = "mqtt",
          value_parser = |s: &str| fjord_gateway::connectors::mqtt::parse_version(s))]
    pub mqtt_version: fjord_gateway::connectors::mqtt::Version,
    /// NATS: authenticate with this .creds file (user JWT and nkey seed, as `nsc` writes)
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS: authenticate with the nkey seed (SU...) in this file
    #[arg(long, value_name = "FILE", conflicts_with = "nats_creds")]
    pub nats_nkey: Option<PathBuf>,
    /// NATS: trust the server certificate signed by these CA certificates (PEM) instead of the
    /// system's roots; implies TLS
    #[arg(long, value_name = "PEM")]
    pub nats_ca: Option<PathBuf>,
    /// NATS: require TLS with nats:// URLs too (tls:// URLs always do)
    #[arg(long)]
    pub nats_tls: bool,
    /// NATS: the key (32+ random bytes) that signs queued calls; a call without a valid
    /// signature is dead-lettered, never run. Every fjord server sharing the NATS queue needs
    /// the same file (copy it), or each dead-letters the others' calls [default:
    /// <data-dir>/secrets/queue.key, made on first start]
    #[arg(long, value_name = "FILE")]
    pub queue_key: Option<PathBuf>,
    /// How often the autoscaler and the scale-to-zero idler decide
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub autoscale_interval: std::time::Duration,
    /// Idle time before a function labelled com.openfaas.scale.zero=true scales to zero, when
    /// its com.openfaas.scale.zero-duration label does not say (at least 1s)
    #[arg(long, default_value = "15m", value_parser = parse_zero_duration)]
    pub scale_zero_duration: std::time::Duration,
    /// HTTP worker threads, each with its own event loop [default: one per core]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this certificate chain (PEM). Reloaded on
    /// SIGHUP and when the file changes
    #[arg(long, env = "FJORD_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC)
    #[arg(long, env = "FJORD_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Failed logins per minute from one client address before it gets 429 for a minute
    /// (0 = no limit)
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub auth_fail_limit: u32,
    /// Where async callbacks (X-Callback-Url) may go besides public addresses: networks,
    /// IP addresses or host names, comma-separated or repeated, e.g. 10.0.0.0/8,hooks.internal.
    /// By default callbacks to loopback, private, link-local (cloud metadata), CGNAT and
    /// multicast addresses are refused [default: none]; this gateway's own address always is
    #[arg(long, env = "FJORD_CALLBACK_ALLOW", value_name = "CIDR|IP|HOST", value_delimiter = ',',
          value_parser = |s: &str| fjord_gateway::CallbackAllow::parse(s))]
    pub callback_allow: Vec<fjord_gateway::CallbackAllow>,
    /// Require the admin password or an API token of scope read on GET /metrics (its
    /// metric labels name every function). Off by default, as in OpenFaaS
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "true|false")]
    pub metrics_auth: bool,
    /// Open connections above which the oldest are asked to close (idle ones at once, busy
    /// ones after their request), so idle clients cannot keep new ones out
    /// [default: 3/4 of the open-files limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Open connections from one client address; more get 429 and are closed (0 = no limit;
    /// behind a reverse proxy on this host, raise it above the proxy's connection pool)
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_connections_per_ip: u32,
    /// Fork-mode processes of one function running at once; more calls get 429 with
    /// Retry-After (0 = no limit)
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_forks_per_function: u64,
    /// Fork-mode processes started for one client address running at once; more get 429
    /// with Retry-After (0 = no limit; behind a reverse proxy every client has its address)
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_forks_per_ip: u32,
    /// Where functions run: `local` (this machine) or `kubernetes` (each function a
    /// Deployment on the cluster of --kubeconfig, or of the service account fjord runs
    /// under in the cluster; Kubernetes pulls the images, and async calls need --queue
    /// nats://... shared by the gateway's replicas)
    #[arg(
        long,
        value_enum,
        default_value = "local",
        env = "FJORD_RUNTIME",
        value_name = "local|kubernetes"
    )]
    pub runtime: RuntimeKind,
    /// With --runtime kubernetes: the kubeconfig whose current context names the cluster
    /// [default: $KUBECONFIG, else ~/.kube/config, else the in-cluster service account]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Run container images (functions whose image is not a bundle and that give no
    /// envProcess, or annotated com.fjord.runtime: container): auto = when fjord runs as root
    /// and the OCI runtime is installed; on = refuse to start without them; off = never
    #[arg(long, value_enum, default_value = "auto", value_name = "auto|on|off")]
    pub containers: fjord_gateway::ContainerMode,
    /// The OCI runtime that runs containers: a program name looked up in PATH, or a path
    /// (runc, crun, youki)
    #[arg(long, default_value = "runc", value_name = "PROGRAM")]
    pub oci_runtime: PathBuf,
    /// A registry reached over plain HTTP although it is not on loopback (loopback
    /// registries always are), e.g. registry.lan:5000; repeat or separate with commas
    #[arg(long, value_name = "HOST[:PORT]", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// A Docker config.json with registry credentials for pulls of functions that name no
    /// registry-auth secret (read at every pull, so `docker login` needs no restart)
    /// [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json, when present]
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// Largest image layer accepted, uncompressed (a decompression bomb stops here)
    #[arg(long, default_value = "16Gi", value_parser = parse_size, value_name = "BYTES")]
    pub max_layer_size: u64,
    /// Content trust: a YAML policy saying, per namespace, which public keys must have
    /// signed a function's image or bundle (or allow-unsigned); see docs/trust.md.
    /// Without it unsigned code runs
    #[arg(long, value_name = "FILE")]
    pub trust_policy: Option<PathBuf>,
    /// Log format
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// `8MiB`, `512KiB`, `1000000`.
fn parse_size(s: &str) -> Result<u64, String> {
    fjord_core::quantity::parse_memory(s.trim().trim_end_matches('B')).map_err(|e| e.to_string())
}

/// `--scale-zero-duration`: a duration of at least a second.
fn parse_zero_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("{s:?} is under 1s: use e.g. 30s or 15m"));
    }
    Ok(d)
}

/// `--tmp-size`: at least 1Mi.
fn parse_tmp_size(s: &str) -> Result<u64, String> {
    parse_size(s).and_then(|n| {
        (n >= 1 << 20)
            .then_some(n)
            .ok_or_else(|| "must be at least 1Mi".into())
    })
}

/// `--default-memory-limit`: `0` (none) or at least 4Mi, like limits.memory.
fn parse_memory_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s).and_then(|n| {
        (n >= 4 << 20)
            .then_some(n)
            .ok_or_else(|| "must be 0 (no limit) or at least 4Mi".into())
    })
}

#[derive(Args)]
pub struct NewArgs {
    /// The function's name (a DNS-1123 label: lower-case letters, digits, '-')
    pub name: Option<String>,
    /// Template language (see --list)
    #[arg(long)]
    pub lang: Option<String>,
    /// List the templates
    #[arg(long)]
    pub list: bool,
    /// Image prefix, e.g. ghcr.io/acme
    #[arg(short, long, env = "OPENFAAS_PREFIX")]
    pub prefix: Option<String>,
    /// Add the function to this existing stack file instead of creating stack.yml
    #[arg(short, long)]
    pub append: Option<PathBuf>,
    /// Folder for the handler [default: ./NAME]
    #[arg(long)]
    pub handler: Option<PathBuf>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// How registries are reached (`--image` builds and pushes).
#[derive(Args, Clone, Default)]
pub struct RegistryArgs {
    /// Docker config.json with registry credentials (`auths`, as `docker login` writes)
    /// [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// A registry reached over plain HTTP (only loopback ones are, otherwise), host or
    /// host:port; comma-separated or repeated
    #[arg(long, value_delimiter = ',', value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
}

/// `--image`: OCI images instead of bundles.
#[derive(Args, Clone, Default)]
pub struct ImageArgs {
    /// Build OCI images (a base image + fjord's watchdog + the function), named by each
    /// function's `image:`, into build/NAME/image/ (an OCI image layout)
    #[arg(long)]
    pub image: bool,
    /// The base image [default: stack.yml's build_args.BASE_IMAGE, else the template's]
    #[arg(long, value_name = "IMAGE", requires = "image")]
    pub base_image: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Build this many functions at once
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Rebuild even when the inputs did not change
    #[arg(long)]
    pub no_cache: bool,
    /// Print only errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Sign each bundle built with this private key (cosign.key): the signature is written
    /// beside it (build/NAME/bundle.sig.json) and uploaded by `fjord push`/`up`. Images are
    /// signed where they are stored: `fjord push --image --sign KEY`
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Deploy one function without a stack file: its name
    #[arg(long)]
    pub name: Option<String>,
    /// With --name: the image (a bundle tag, or any label when --fprocess says what to run)
    #[arg(long)]
    pub image: Option<String>,
    /// With --name: the command to run (the watchdog's fprocess)
    #[arg(long)]
    pub fprocess: Option<String>,
    /// Environment variable KEY=VALUE (repeatable; wins over the stack file)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Label KEY=VALUE (repeatable)
    #[arg(short = 'l', long = "label")]
    pub label: Vec<String>,
    /// Annotation KEY=VALUE (repeatable)
    #[arg(long = "annotation")]
    pub annotation: Vec<String>,
    /// Secret name (repeatable)
    #[arg(long = "secret")]
    pub secret: Vec<String>,
    /// Namespace [default: the stack's, else openfaas-fn]
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Do not wait for the function to become ready
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// With --image, images are pushed to their registries and deployed by reference
    #[command(flatten)]
    pub image: ImageArgs,
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    #[arg(long)]
    pub no_cache: bool,
    /// Build only locally: do not upload (or push the images)
    #[arg(long)]
    pub skip_push: bool,
    /// Build and push, do not deploy
    #[arg(long)]
    pub skip_deploy: bool,
    #[command(flatten)]
    pub sign: SignFlag,
    /// Do not wait for the functions to become ready
    #[arg(long)]
    pub no_wait: bool,
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Args)]
pub struct InvokeArgs {
    pub name: String,
    /// Queue the call (POST /async-function/NAME) and print its call id
    #[arg(short, long)]
    pub r#async: bool,
    /// Header KEY=VALUE (repeatable)
    #[arg(short = 'H', long = "header")]
    pub header: Vec<String>,
    /// Query parameter KEY=VALUE (repeatable)
    #[arg(long)]
    pub query: Vec<String>,
    /// HTTP method
    #[arg(short, long, default_value = "POST")]
    pub method: String,
    /// Content-Type of the body
    #[arg(long, default_value = "text/plain")]
    pub content_type: String,
    /// Extra path after the function's name, e.g. /users/1
    #[arg(long, default_value = "")]
    pub path: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// A CIDR, or a single address as a /32.
fn parse_ipv4_net(s: &str) -> Result<ipnet::Ipv4Net, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<ipnet::Ipv4Net>() {
        return Ok(n);
    }
    s.parse::<std::net::Ipv4Addr>()
        .map(ipnet::Ipv4Net::from)
        .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR (e.g. 10.0.0.5 or 10.0.0.0/8)"))
}

#[cfg(test)]
mod tests {
    /// clap's own checks (e.g. a flag name used twice in one command) run only when a
    /// command is built: build them all here rather than at a user's first run.
    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// Gateway flags work after a nested subcommand too, as in faas-cli
    /// (`fjord secret list -g URL`), not only before it.
    #[test]
    fn gateway_flags_go_anywhere() {
        use clap::Parser;
        for args in [
            &["fjord", "calls", "list", "-g", "http://gw:8080"][..],
            &["fjord", "calls", "-g", "http://gw:8080", "list"],
            &["fjord", "secret", "list", "--gateway", "http://gw:8080"],
            &[
                "fjord",
                "token",
                "list",
                "-g",
                "http://gw:8080",
                "--tls-no-verify",
            ],
        ] {
            let cli = super::Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let gateway = match cli.command {
                super::Command::Calls { gateway, .. }
                | super::Command::Secret { gateway, .. }
                | super::Command::Token { gateway, .. } => gateway.gateway,
                _ => None,
            };
            assert_eq!(gateway.as_deref(), Some("http://gw:8080"), "{args:?}");
        }
    }
}
