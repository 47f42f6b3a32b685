//! fjord's image store: OCI/Docker image references, pulls from registries (through
//! `oci-client`, every blob verified against its digest), and a content-addressed store in
//! which each layer is unpacked once, in overlayfs form, and shared by every image using it.
//!
//! The store produces [`fjord_runtime_api::ImageRootfs`] values: the layer directories,
//! lowest first, ready to be an overlay's lower dirs, and the image's configuration.

mod auth;
mod client;
mod error;
mod layer;
pub mod layout;
pub mod push;
mod reference;
pub mod signature;
mod store;

pub use auth::{AuthConfigError, Credentials, DockerConfig};
pub use client::default_docker_config;
pub use error::OciError;
pub use reference::{DOCKER_HUB, Reference, ReferenceError};
pub use store::{
    GcReport, ImageInfo, ImageStore, LayerState, Limits, Progress, PullPolicy, StoreConfig,
};
