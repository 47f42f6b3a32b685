//! Responses many operations of the OpenAPI document share (a leaf module: handlers name
//! these in their `#[utoipa::path]`, and the document module names the handlers).

use std::collections::BTreeMap;

use utoipa::openapi::RefOr;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoResponses, ToResponse};

pub(crate) fn text_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

pub(crate) fn plain(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "text/plain",
        ContentBuilder::new().schema(Some(text_schema())).build(),
    )
}

pub(crate) fn header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(text_schema())
        .description(Some(description))
        .build()
}

/// `401` of every `/system` route.
pub struct Unauthorized;

impl<'r> ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<ApiResponse>) {
        (
            "Unauthorized",
            plain("Missing or wrong credentials (user admin, the password in <data-dir>/secrets/basic-auth-password)")
                .header("WWW-Authenticate", header("`Basic realm=\"Restricted\"`"))
                .build()
                .into(),
        )
    }
}

/// What an invocation can answer: the function's own response (any status, type and body),
/// or fjord's plain-text errors (which a function may also answer with, in any type).
pub struct InvokeResponses;

impl IntoResponses for InvokeResponses {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        let call_headers = |r: ResponseBuilder| {
            r.header(
                "X-Call-Id",
                header("The caller's X-Call-Id, else a new UUID"),
            )
            .header(
                "X-Start-Time",
                header("Unix time in nanoseconds when fjord received the request"),
            )
            .header(
                "X-Duration-Seconds",
                header("Seconds until the response headers were ready"),
            )
        };
        let retry = |r: ResponseBuilder| r.header("Retry-After", header("Seconds: `1`"));
        [
            (
                "default",
                // No content: the function chooses the status, content type and body.
                call_headers(ResponseBuilder::new().description(
                    "The function's own answer: status, headers and body as it sent them",
                )),
            ),
            (
                "401",
                call_headers(plain(
                    "The function is annotated com.fjord.auth: token and no valid token was sent",
                )),
            ),
            (
                "403",
                call_headers(plain("The token's scope may not call functions (read tokens)")),
            ),
            (
                "404",
                call_headers(plain("The function is not deployed")),
            ),
            (
                "408",
                call_headers(plain(
                    "The request body did not arrive within read_timeout, or (fork mode) exec_timeout passed: `Killed process.`",
                )),
            ),
            (
                "429",
                retry(call_headers(plain(
                    "Every replica is at max_inflight and the function is at its maximum scale, (fork mode) --max-forks-per-function or --max-forks-per-ip processes are running, or too many failed authentications came from this address",
                ))),
            ),
            (
                "500",
                call_headers(plain(
                    "Fork mode: the process exited non-zero (reason, then its output) or could not start",
                )),
            ),
            (
                "502",
                call_headers(plain(
                    "Http mode: the replica failed before answering (crashed or OOM-killed)",
                )),
            ),
            (
                "503",
                retry(call_headers(plain(
                    "No replica became ready within --ready-timeout, or too many requests wait for one",
                ))),
            ),
            (
                "504",
                call_headers(plain(
                    "Http mode: no response headers within exec_timeout",
                )),
            ),
        ]
        .into_iter()
        // Any status may also be the function's own answer, in its own content type.
        .map(|(status, r)| {
            let r = if status == "default" {
                r
            } else {
                r.content("*/*", ContentBuilder::new().build())
            };
            (status.to_string(), r.build().into())
        })
        .collect()
    }
}
