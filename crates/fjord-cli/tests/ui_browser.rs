//! The dashboard (`/ui/`) in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, from the distribution's packages) against the real `fjord serve`. Sign-in,
//! the list, the function page (invoke console, scale to zero and back, live logs, graphs),
//! XSS payloads in every user-controlled string, a `read` token's disabled buttons; CSRF and
//! the session cookie are checked with plain HTTP too. Screenshots go to docs/img/.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let port = free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver; scripts/test does)");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    let http = client();
    wait_until(BOUND, "chromedriver answers", async || {
        http.get(&status)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    Driver { child, url }
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-proxy-server", "--window-size=1280,1000", "--disable-extensions"],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session")
}

/// Runs `script` (a function body) in the page.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

async fn text_of(c: &Client, css: &str) -> String {
    let q = serde_json::to_string(css).unwrap();
    js(
        c,
        &format!("const e = document.querySelector({q}); return e ? e.textContent : null;"),
    )
    .await
    .as_str()
    .unwrap_or("")
    .to_string()
}

async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    wait_until(BOUND, &format!("{css} shows {needle:?}"), async || {
        let t = text_of(c, css).await;
        if t.contains(needle) { Ok(t) } else { Err(t) }
    })
    .await
}

/// Waits until neither the element `css` nor any element around it is hidden.
async fn wait_shown(c: &Client, css: &str) {
    let script = format!("return !document.querySelector('{css}').closest('[hidden]');");
    wait_until(BOUND, &format!("{css} shows"), async || {
        if js(c, &script).await == json!(true) {
            Ok(())
        } else {
            Err("hidden".to_string())
        }
    })
    .await
}

/// Finds `css`, waiting for it: a click on the nav renders the next page asynchronously, so
/// its elements may not exist yet when the click returns.
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(BOUND)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

async fn set_value(c: &Client, css: &str, value: &str) {
    let e = find(c, css).await;
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    find(c, css)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn sign_in(c: &Client, s: &Server, secret: &str) {
    c.goto(&s.ui_url("/ui/")).await.unwrap();
    wait_until(BOUND, "the sign-in form", async || {
        c.find(Locator::Css("#signin input")).await.is_ok()
    })
    .await;
    set_value(c, "#signin input", secret).await;
    click(c, "#signin button[type=submit]").await;
}

async fn screenshot(c: &Client, name: &str) {
    js(
        c,
        "window.scrollTo(0, 0); document.activeElement && document.activeElement.blur();",
    )
    .await;
    let png = c.screenshot().await.expect("screenshot");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/img");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("ui-{name}.png")), png).unwrap();
}

/// Payloads that would run code if any user string were put into the page as HTML.
const SCRIPT: &str = "<script>window.__xss = 1; alert(1)</script>";
const IMG: &str = "<img src=x onerror=\"window.__xss = 2; alert(2)\">";

/// Nothing ran and no element came from a payload.
async fn assert_nothing_executed(c: &Client, where_: &str) {
    assert!(
        c.get_alert_text().await.is_err(),
        "{where_}: an alert is open: a payload ran"
    );
    let r = js(
        c,
        "return [window.__xss === undefined, document.querySelectorAll('script:not([src]), img[src=\"x\"], img[onerror]').length];",
    )
    .await;
    assert_eq!(
        r,
        json!([true, 0]),
        "{where_}: a payload ran or became markup"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_a_real_browser() {
    let s = Server::start_opts(ServeOpts::args(&["--containers", "off"])).await;
    let password = s.password.clone().expect("auth is on");
    // `web` answers with JSON about the request; `xss` carries payloads in its labels and env,
    // writes one to its log and echoes the body (a response carrying them).
    s.deploy_ready(&http_fn("web", "v1")).await;
    let echo = format!(
        "/bin/sh -c 'echo \"LOG {SCRIPT} {}\" >&2; cat'",
        IMG.replace('"', "\\\"")
    );
    s.deploy_ready(&json!({
        "service": "xss",
        "image": "fjord-test/fork:latest",
        "envProcess": echo,
        "labels": {"evil": SCRIPT, "img": IMG},
        // stderr to the log, not into the response.
        "envVars": {"EVIL": IMG, "combine_output": "false"},
        "annotations": {"note": SCRIPT},
    }))
    .await;

    let driver = start_driver().await;
    let c = browser(&driver).await;

    // `/` on the main port sends browsers to the dashboard's own port, where it works.
    c.goto(&s.url("/")).await.unwrap();
    let dashboard = s.ui_url("/ui/");
    wait_until(BOUND, "/ redirects to the dashboard's /ui/", async || {
        let u = c
            .current_url()
            .await
            .map_or_else(|e| e.to_string(), |u| u.to_string());
        (u == dashboard).then_some(()).ok_or(u)
    })
    .await;
    assert_ne!(s.ui_base, s.base, "the dashboard has its own origin");

    // Wrong password: refused, still at the form.
    wait_until(BOUND, "the sign-in form", async || {
        c.find(Locator::Css("#signin input")).await.is_ok()
    })
    .await;
    set_value(&c, "#signin input", "not-the-password").await;
    click(&c, "#signin button[type=submit]").await;
    wait_text(&c, "#signin-error", "Wrong password").await;
    assert!(c.find(Locator::Css("#functions")).await.is_err());
    screenshot(&c, "sign-in").await;

    // The list shows both functions.
    set_value(&c, "#signin input", &password).await;
    click(&c, "#signin button[type=submit]").await;
    wait_text(&c, "#functions tbody", "web").await;
    wait_text(&c, "#functions tbody", "xss").await;
    let row = wait_text(&c, "#functions tr[data-name=web]", "ready").await;
    assert!(row.contains("1 / 1"), "{row}");
    assert_nothing_executed(&c, "list").await;
    // The text filter hides what does not match.
    set_value(&c, "#filter", "web").await;
    wait_text(&c, "#count", "1 of 2").await;
    set_value(&c, "#filter", "").await;
    wait_text(&c, "#count", "2 of 2").await;

    // The function page (a link through the main port keeps its fragment): invoke from the
    // console and read the answer.
    c.goto(&s.url("/ui/#/fn/openfaas-fn/web")).await.unwrap();
    wait_text(&c, "#fn-status", "ready").await;
    set_value(&c, "#inv-path", "/hello").await;
    set_value(&c, "#inv-query", "x=1").await;
    set_value(&c, "#inv-body", "from the console").await;
    click(&c, "#inv-send").await;
    wait_text(&c, "#inv-status", "200").await;
    let body: Value = serde_json::from_str(&wait_text(&c, "#inv-body-out", "console").await)
        .expect("the function's JSON answer");
    assert_eq!(body["path"], "/hello");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["body"], "from the console");
    assert!(
        body["headers"].get("cookie").is_none(),
        "the function saw the browser's cookie: {body}"
    );
    let call_id = text_of(&c, "#inv-callid").await;
    assert!(call_id.len() > 8, "a call id is shown: {call_id:?}");

    // A log line appears live.
    s.call_text(Method::GET, "web/log?live-line-42", "").await;
    wait_text(&c, "#logs", "LOGLINE live-line-42").await;

    // The requests graph gets samples with requests.
    for _ in 0..5 {
        s.call("web/").await;
    }
    wait_until(
        Duration::from_secs(60),
        "the graphs show requests",
        async || {
            let n = js(
                &c,
                "return Number(document.querySelector('.graphs').dataset.requests || 0);",
            )
            .await;
            let why = text_of(&c, "#actions-msg").await;
            let samples = js(
                &c,
                "return document.querySelector('.graphs').dataset.samples;",
            )
            .await;
            n.as_f64()
                .is_some_and(|n| n > 0.0)
                .then_some(())
                .ok_or(format!(
                    "{n} requests in {samples} samples; {why}; server: {:?}",
                    s.sys_text(Method::GET, "/system/function/web/history")
                        .await
                ))
        },
    )
    .await;
    // A few samples, for the screenshot's graphs.
    wait_until(Duration::from_secs(60), "three samples", async || {
        let n = js(
            &c,
            "return Number(document.querySelector('.graphs').dataset.samples || 0);",
        )
        .await;
        n.as_u64().is_some_and(|n| n >= 3).then_some(()).ok_or(n)
    })
    .await;
    screenshot(&c, "function").await;
    // The list shows the requests too.
    click(&c, "#nav a[href='#/']").await;
    wait_until(BOUND, "the list's requests/s", async || {
        let t = text_of(&c, "#functions tr[data-name=web] td:nth-child(9)").await;
        (t.contains('/') && !t.starts_with('–'))
            .then_some(())
            .ok_or(t)
    })
    .await;
    screenshot(&c, "functions").await;
    c.goto(&s.ui_url("/ui/#/fn/openfaas-fn/web")).await.unwrap();
    wait_text(&c, "#fn-status", "ready").await;

    // Scale to zero and back.
    click(&c, "#scale-zero").await;
    wait_text(&c, "#fn-status", "at zero").await;
    assert_eq!(s.get_function("web").await.unwrap()["replicas"], 0);
    set_value(&c, "#replicas", "1").await;
    click(&c, "#scale").await;
    wait_text(&c, "#fn-status", "1 of 1 replicas ready").await;

    // XSS: payloads in labels, env, annotations, logs and the response show as text only.
    c.goto(&s.ui_url("/ui/#/fn/openfaas-fn/xss")).await.unwrap();
    wait_text(&c, "#spec", "onerror").await;
    set_value(&c, "#inv-body", &format!("{SCRIPT}{IMG}")).await;
    click(&c, "#inv-send").await;
    let shown = wait_text(&c, "#inv-body-out", "<img").await;
    assert_eq!(
        shown,
        format!("{SCRIPT}{IMG}"),
        "the response is shown as text"
    );
    // Each call writes the payloads to the function's log.
    wait_text(&c, "#logs", "LOG <script>").await;
    assert_nothing_executed(&c, "function page").await;

    // Deleting needs a confirmation.
    click(&c, "#delete").await;
    wait_shown(&c, "#confirm-delete").await;
    click(&c, "#confirm-delete-no").await;
    assert!(s.get_function("xss").await.is_some());
    click(&c, "#delete").await;
    click(&c, "#confirm-delete-yes").await;
    wait_until(BOUND, "xss is deleted", async || {
        s.get_function("xss").await.is_none()
    })
    .await;
    // The page goes back to the list once the delete is accepted.
    wait_until(BOUND, "back at the list", async || {
        c.find(Locator::Css("#functions")).await.is_ok()
    })
    .await;
    click(&c, "#nav a[href='#/deploy']").await;
    wait_until(BOUND, "the deploy form", async || {
        let found = c.find(Locator::Css("#deploy")).await.is_ok();
        let page = js(
            &c,
            "return location.hash + ' ' + document.getElementById('main').textContent;",
        )
        .await;
        found.then_some(()).ok_or(page)
    })
    .await;
    // Deploy from the form: a validation error shows next to its field, then a good one
    // becomes ready.
    set_value(&c, "#d-name", "Bad_Name").await;
    set_value(&c, "#d-image", "fjord-test/fork:latest").await;
    set_value(&c, "#d-process", "cat").await;
    click(&c, "#deploy button[type=submit]").await;
    wait_text(&c, "#d-name-err", "function name").await;
    screenshot(&c, "deploy").await;
    set_value(&c, "#d-name", "formfn").await;
    click(&c, "#deploy button[type=submit]").await;
    wait_text(&c, "#fn-status", "1 of 1 replicas ready").await;
    assert_eq!(s.get_function("formfn").await.unwrap()["envProcess"], "cat");

    // Secrets: create one, see it listed (never its value), delete it.
    click(&c, "#nav a[href='#/secrets']").await;
    set_value(&c, "#s-name", "db-password").await;
    set_value(&c, "#s-value", "hunter2-value").await;
    click(&c, "#secret-form button[type=submit]").await;
    wait_text(&c, "#secrets", "db-password").await;
    let page = js(&c, "return document.body.innerText;").await;
    assert!(
        !page.as_str().unwrap().contains("hunter2-value"),
        "a secret's value is shown"
    );
    assert_eq!(
        js(&c, "return document.querySelector('#s-value').value;").await,
        json!("")
    );
    click(&c, "#secrets tbody button").await;
    wait_until(BOUND, "the secret is deleted", async || {
        let (_, list) = s.sys_text(Method::GET, "/system/secrets").await;
        (!list.contains("db-password")).then_some(()).ok_or(list)
    })
    .await;

    // A dead-lettered call is replayed from the async calls page.
    let mut flaky = http_fn("flaky", "v1");
    flaky["annotations"] = json!({"com.openfaas.retry.attempts": "1"});
    s.deploy_ready(&flaky).await;
    let r = s
        .client
        .post(s.url("/async-function/flaky/status/503"))
        .header("x-call-id", "call-to-replay")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let dead = wait_until(BOUND, "the call is dead-lettered", async || {
        let (_, body) = s
            .sys_text(Method::GET, "/system/async-calls/call-to-replay")
            .await;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
        if v["state"] == "dead" {
            Ok(v)
        } else {
            Err(body)
        }
    })
    .await;
    click(&c, "#nav a[href='#/async']").await;
    wait_text(&c, "#calls tr[data-call=call-to-replay]", "dead").await;
    screenshot(&c, "async").await;
    click(&c, "#calls tr[data-call=call-to-replay] button").await;
    wait_until(BOUND, "the call is replayed", async || {
        let (_, body) = s
            .sys_text(Method::GET, "/system/async-calls/call-to-replay")
            .await;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
        (v["updatedAtMs"].as_u64() > dead["updatedAtMs"].as_u64())
            .then_some(())
            .ok_or(body)
    })
    .await;

    // API tokens: created with a scope, shown once in the page, revoked.
    click(&c, "#nav a[href='#/tokens']").await;
    set_value(&c, "#t-name", "ci-deployer").await;
    c.find(Locator::Css("#t-scope"))
        .await
        .unwrap()
        .select_by_value("deploy")
        .await
        .unwrap();
    click(&c, "#token-form button[type=submit]").await;
    let shown = wait_text(&c, "#token-once", "fjord_").await;
    wait_text(&c, "#tokens", "ci-deployer").await;
    assert!(
        !c.current_url().await.unwrap().as_str().contains("fjord_"),
        "the token went into the URL"
    );
    let (_, listed) = s.sys_text(Method::GET, "/system/tokens").await;
    assert!(
        listed.contains("ci-deployer") && listed.contains("\"deploy\""),
        "{listed}"
    );
    let token = &shown[shown.find("fjord_").unwrap()..];
    assert!(token.len() > 20, "{shown}");
    assert!(!listed.contains(token), "the list has the token");
    js(
        &c,
        "[...document.querySelectorAll('#tokens tbody tr')].find(tr => tr.textContent.includes('ci-deployer')).querySelector('button').click();",
    )
    .await;
    wait_until(BOUND, "the token is revoked", async || {
        let (_, list) = s.sys_text(Method::GET, "/system/tokens").await;
        (!list.contains("ci-deployer")).then_some(()).ok_or(list)
    })
    .await;

    // The system page.
    click(&c, "#nav a[href='#/system']").await;
    wait_text(&c, "#system", "embedded: healthy").await;

    // A read token: sees the function, no enabled change button; a forged call is refused.
    let (st, created) = s
        .sys_json(
            Method::POST,
            "/system/tokens",
            &json!({"name": "viewer", "scope": "read"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let token: Value = serde_json::from_str(&created).unwrap();
    click(&c, "#signout").await;
    wait_until(BOUND, "signed out", async || {
        c.find(Locator::Css("#signin input")).await.is_ok()
    })
    .await;
    sign_in(&c, &s, token["token"].as_str().unwrap()).await;
    wait_text(&c, "#who", "read").await;
    c.goto(&s.ui_url("/ui/#/fn/openfaas-fn/web")).await.unwrap();
    wait_text(&c, "#fn-status", "ready").await;
    let enabled = js(
        &c,
        "return [...document.querySelectorAll('[data-needs]')].filter(b => !b.disabled).map(b => b.textContent);",
    )
    .await;
    assert_eq!(enabled, json!([]), "change buttons a read token may press");
    let buttons = js(
        &c,
        "return document.querySelectorAll('[data-needs]').length;",
    )
    .await;
    assert!(buttons.as_u64().unwrap() >= 4, "{buttons}");
    let forged = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
            (async () => {
              const s = await (await fetch('/ui/session')).json();
              const r = await fetch('/system/scale-function/web', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-Fjord-CSRF': s.csrf},
                body: JSON.stringify({serviceName: 'web', replicas: 0})});
              done(r.status);
            })();"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        forged,
        json!(403),
        "the API refuses what the read scope cannot do"
    );
    assert_eq!(s.get_function("web").await.unwrap()["replicas"], 1);
    assert_nothing_executed(&c, "read token").await;

    c.close().await.unwrap();
}

/// What a hostile function's page tries with the admin's browser: read the session (CSRF
/// token) and the API on its own origin, read them cross-origin on the dashboard's port with
/// credentials, and change something there. Writes what it got into `#out`.
const PROBE: &str = r#"
const out = [];
window.__probe = out;
const tryit = async (name, url, opts) => {
  try {
    // The main port's 401 asks for Basic credentials: the browser's password prompt would
    // hold the request forever.
    const r = await fetch(url, Object.assign({credentials: 'include', signal: AbortSignal.timeout(5000)}, opts || {}));
    out.push(name + ' ' + r.status + ' ' + (await r.text()).slice(0, 300));
  } catch (e) { out.push(name + ' blocked ' + e.name); }
};
await tryit('session', '/ui/session');
await tryit('functions', '/system/functions');
await tryit('x-session', UI + '/ui/session');
await tryit('x-functions', UI + '/system/functions');
await tryit('x-scale', UI + '/system/scale-function/web', {method: 'POST',
  headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({serviceName: 'web', replicas: 0})});
await tryit('x-scale-header', UI + '/system/scale-function/web', {method: 'POST',
  headers: {'Content-Type': 'application/json', 'X-Fjord-CSRF': 'guess'},
  body: JSON.stringify({serviceName: 'web', replicas: 0})});
let cookie = 'none';
try { cookie = document.cookie; } catch (e) { cookie = 'blocked ' + e.name; }
out.push('cookie ' + cookie);
"#;

/// Nothing in what the probe got is the dashboard's data: each attempt was blocked (or held by
/// the browser's password prompt, a timeout), or is the main port's 401.
fn assert_probe_got_nothing(got: &str, where_: &str) {
    eprintln!("{where_}: the probe got:\n{got}");
    for leak in [
        "csrf",
        "\"scope\"",
        "\"name\":\"web\"",
        "replicas",
        "fjord_session",
    ] {
        assert!(
            !got.contains(leak),
            "{where_}: the probe read {leak}:\n{got}"
        );
    }
    for line in got.lines() {
        let ok = line.contains(" blocked ")
            || line.starts_with("functions 401")
            || line.starts_with("cookie ");
        assert!(
            ok,
            "{where_}: an attempt got an answer it could read: {line}\n{got}"
        );
    }
}

/// A function's HTML runs on the main port (another origin than the dashboard) or, opened on
/// the dashboard's port, as a sandboxed document: with the admin signed in, its scripts get
/// neither the session, nor the API's data, nor a change.
#[tokio::test(flavor = "multi_thread")]
async fn a_functions_page_cannot_use_the_dashboards_session() {
    let s = Server::start_opts(ServeOpts::args(&["--containers", "off"])).await;
    let password = s.password.clone().unwrap();
    s.deploy_ready(&http_fn("web", "v1")).await;
    let page = format!(
        "<!doctype html><title>evil</title><pre id=out>not run</pre><script>\
         document.getElementById('out').textContent = 'running';\
         const UI = {ui};\
         (async () => {{ {PROBE}\
         document.getElementById('out').textContent = out.join('\\n'); document.title = 'done'; }})();\
         </script>",
        ui = serde_json::to_string(&s.ui_base).unwrap(),
    );
    s.deploy_ready(&json!({
        "service": "evil",
        "image": "fjord-test/fork:latest",
        "envProcess": "/bin/sh -c 'printf %s \"$PAGE\"'",
        "envVars": {"PAGE": page, "content_type": "text/html"},
    }))
    .await;

    let driver = start_driver().await;
    let c = browser(&driver).await;
    sign_in(&c, &s, &password).await;
    wait_text(&c, "#functions tbody", "evil").await;

    // On the main port the page's script runs, in an origin that is not the dashboard's.
    c.goto(&s.url("/function/evil")).await.unwrap();
    let got = wait_until(BOUND, "the probe finished", async || {
        let t = js(&c, "return document.title;").await;
        if t == json!("done") {
            Ok(text_of(&c, "#out").await)
        } else {
            Err(js(&c, "return (window.__probe || []).join(' | ');")
                .await
                .to_string())
        }
    })
    .await;
    assert_probe_got_nothing(&got, "main port");
    assert!(got.contains("x-scale blocked"), "{got}");

    // On the dashboard's port (the invoke console's origin) it is a sandboxed document: its
    // own script does not run, and a script run there anyway is in an opaque origin.
    let r = s.ui(Method::GET, "/function/evil").send().await.unwrap();
    assert_eq!(
        header(r.headers(), "content-security-policy"),
        Some("sandbox")
    );
    assert_eq!(
        header(r.headers(), "x-content-type-options"),
        Some("nosniff")
    );
    c.goto(&s.ui_url("/function/evil")).await.unwrap();
    wait_until(BOUND, "the sandboxed page loaded", async || {
        js(&c, "return document.readyState;").await == json!("complete")
    })
    .await;
    assert_eq!(text_of(&c, "#out").await, "not run", "its script ran");
    assert_eq!(js(&c, "return window.origin;").await, json!("null"));
    let got = c
        .execute_async(
            &format!(
                "const done = arguments[arguments.length - 1]; const UI = {ui};\
                 (async () => {{ {PROBE} done(out.join('\\n')); }})();",
                ui = serde_json::to_string(&s.ui_base).unwrap()
            ),
            vec![],
        )
        .await
        .expect("the probe ran");
    let got = got.as_str().unwrap_or_default().to_string();
    assert_probe_got_nothing(&got, "dashboard port, sandboxed");

    // Nothing changed and the admin is still signed in.
    assert_eq!(s.get_function("web").await.unwrap()["replicas"], 1);
    c.goto(&s.ui_url("/ui/")).await.unwrap();
    wait_text(&c, "#functions tbody", "web").await;
    c.close().await.unwrap();
}

/// `--ui-listen ADDR` moves the dashboard; `--ui-listen off` removes it (the main port's
/// `/ui/` is a 404 then).
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_listener_can_be_moved_or_turned_off() {
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    let s = Server::start_opts(ServeOpts::args(&[
        "--containers",
        "off",
        "--ui-listen",
        &at,
    ]))
    .await;
    assert_eq!(s.ui_base, format!("http://{at}"));
    let (st, page) = send_text(s.ui(Method::GET, "/ui/")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("app.js"), "{page}");
    let r = s.open(Method::GET, "/ui/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        header(r.headers(), "location"),
        Some(s.ui_url("/ui/").as_str())
    );
    drop(s);

    let s = Server::start_opts(ServeOpts::args(&[
        "--containers",
        "off",
        "--ui-listen",
        "off",
    ]))
    .await;
    assert!(s.ui_base.is_empty(), "{}", s.ui_base);
    assert!(!s.data_dir().join("ui.addr").exists());
    let (st, body) = send_text(s.open(Method::GET, "/ui/")).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("--ui-listen off"), "{body}");
    let (st, _) = send_text(s.open(Method::GET, "/").header("accept", "text/html")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    drop(s);

    // One port for both is refused (they would share it, each taking some connections).
    let dir = TestDir::new();
    let port = free_port().to_string();
    let at = format!("127.0.0.1:{port}");
    let data = dir.data_dir();
    let out = run_cli(
        &[
            "serve",
            "--listen",
            &at,
            "--ui-listen",
            &at,
            "--tune-kernel=false",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        &dir.tmp.path().join("config.json"),
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("--ui-listen") && out.stderr.contains("its own"),
        "{}",
        out.stderr
    );
}

/// The default dashboard port (--listen's + 1) taken by something else: the server still
/// starts, with the dashboard on a free port it writes to ui.addr.
#[tokio::test]
async fn a_taken_default_dashboard_port_moves_the_dashboard_not_the_server() {
    // A main port whose next one this test can hold.
    let (port, _held) = loop {
        let p = free_port();
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", p + 1)) {
            break (p, l);
        }
    };
    let dir = TestDir::new();
    let data = dir.data_dir();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["--tune-kernel=false", "--containers", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("fjord serve");
    let ui_addr = wait_until(READY_TIMEOUT, "ui.addr written", async || {
        std::fs::read_to_string(data.join("ui.addr"))
            .map(|s| s.trim().to_string())
            .map_err(|e| e.to_string())
    })
    .await;
    assert_ne!(ui_addr, format!("127.0.0.1:{}", port + 1));
    let r = reqwest::get(format!("http://{ui_addr}/ui/"))
        .await
        .expect("dashboard");
    assert_eq!(r.status(), StatusCode::OK);
    let _ = child.kill().await;
    let out = child.wait_with_output().await.expect("its output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("default port") && log.contains("taken"),
        "{log}"
    );
}

/// Every form control of the page has a label (its own, `aria-label` or `aria-labelledby`)
/// and every button a name.
async fn assert_controls_labelled(c: &Client, page: &str) {
    let unlabelled = js(
        c,
        "return [...document.querySelectorAll('input, select, textarea, button')]\
           .filter(e => !e.closest('[hidden]') && e.type !== 'hidden')\
           .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.getAttribute('aria-labelledby')\
                          || (e.tagName === 'BUTTON' && e.textContent.trim())))\
           .map(e => e.outerHTML.slice(0, 120));",
    )
    .await;
    assert_eq!(unlabelled, json!([]), "{page}: controls without a label");
}

/// Every visible text of the page has a WCAG contrast of at least 4.5:1 with its background
/// (3:1 for large text; disabled controls are exempt, as in WCAG).
async fn assert_contrast(c: &Client, page: &str) {
    assert_eq!(
        low_contrast(c).await,
        json!([]),
        "{page}: text below the contrast minimum"
    );
}

async fn low_contrast(c: &Client) -> Value {
    js(
        c,
        r#"const rgb = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); return m ? m[1].split(',').map(parseFloat) : null; };
        const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
          return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
        const bg = (el) => { for (let e = el; e; e = e.parentElement) { const p = rgb(getComputedStyle(e).backgroundColor);
          if (p && (p.length < 4 || p[3] > 0)) return p; } return [255, 255, 255]; };
        const low = [];
        for (const el of document.querySelectorAll('body *')) {
          if (!el.getClientRects().length || el.closest('[hidden], :disabled, .skip')) continue;
          if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
          const st = getComputedStyle(el);
          const a = lum(rgb(st.color)), b = lum(bg(el));
          const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
          const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight, 10) >= 700;
          const large = size >= 24 || (size >= 18.66 && bold);
          if (ratio < (large ? 3 : 4.5)) low.push(`${el.tagName.toLowerCase()}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
        }
        return low;"#,
    )
    .await
}

/// Nothing wider than the window but the tables' own scroll boxes.
async fn assert_fits(c: &Client, page: &str) {
    let r = js(
        c,
        "return [document.documentElement.scrollWidth, window.innerWidth];",
    )
    .await;
    let (w, inner) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
    assert!(inner <= 500, "{page}: not a narrow window: {inner} px");
    assert!(
        w <= inner,
        "{page}: the page is {w} px wide in a {inner} px window"
    );
}

/// The rest of the issue's pages: the invoke console sends a token to a `com.fjord.auth:
/// token` function; the deploy form takes annotations (with the API's error next to them)
/// and uploads a bundle; secrets of another namespace; the system page (connectors, data dir
/// usage); the memory graph; labels, keyboard focus and a narrow screen.
#[tokio::test(flavor = "multi_thread")]
async fn forms_tokens_namespaces_and_system_in_a_real_browser() {
    let s = Server::start_opts(ServeOpts::args(&["--containers", "off"])).await;
    let password = s.password.clone().unwrap();
    let mut private = http_fn("private", "v1");
    private["annotations"] = json!({"com.fjord.auth": "token"});
    s.deploy_ready(&private).await;
    let (st, body) = s
        .sys_json(Method::POST, "/system/namespace/team-a", &json!({}))
        .await;
    assert!(st.is_success(), "{st} {body}");
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/secrets",
            &json!({"name": "team-secret", "value": "v", "namespace": "team-a"}),
        )
        .await;
    assert!(st.is_success(), "{st} {body}");
    let (st, created) = s
        .sys_json(
            Method::POST,
            "/system/tokens",
            &json!({"name": "caller", "scope": "invoke"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let invoke_token = serde_json::from_str::<Value>(&created).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    let driver = start_driver().await;
    let c = browser(&driver).await;
    sign_in(&c, &s, &password).await;
    wait_text(&c, "#functions tbody", "private").await;
    assert_controls_labelled(&c, "functions").await;
    assert_contrast(&c, "functions").await;

    // Keyboard: on a fresh load the first Tab goes to the skip link, visibly focused.
    c.goto(&s.ui_url("/ui/")).await.unwrap();
    wait_text(&c, "#functions tbody", "private").await;
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(&fantoccini::key::Key::Tab.to_string())
        .await
        .unwrap();
    let focused = js(
        &c,
        "const e = document.activeElement; const st = getComputedStyle(e);\
         return [e.className, st.outlineStyle, st.outlineWidth];",
    )
    .await;
    assert_eq!(focused[0], "skip", "{focused}");
    assert_ne!(focused[1], "none", "focus is visible: {focused}");

    // The console: the token field shows for this function; without it 401, with it 200.
    c.goto(&s.ui_url("/ui/#/fn/openfaas-fn/private"))
        .await
        .unwrap();
    wait_text(&c, "#fn-status", "ready").await;
    wait_shown(&c, "#inv-token").await;
    assert_controls_labelled(&c, "function").await;
    assert_contrast(&c, "function").await;
    click(&c, "#inv-send").await;
    wait_text(&c, "#inv-status", "401").await;
    set_value(&c, "#inv-token", &invoke_token).await;
    set_value(&c, "#inv-body", "with a token").await;
    click(&c, "#inv-send").await;
    wait_text(&c, "#inv-status", "200").await;
    let body: Value =
        serde_json::from_str(&wait_text(&c, "#inv-body-out", "with a token").await).unwrap();
    assert!(
        body["headers"].get("authorization").is_none(),
        "the token reached the function: {body}"
    );
    assert!(
        !c.current_url().await.unwrap().as_str().contains("fjord_"),
        "the token went into the URL"
    );

    // Memory: where the runtime measures the replicas (cgroups, with their CPU), the samples
    // carry their memory and the page graphs it.
    let h = wait_until(Duration::from_secs(60), "two history samples", async || {
        let (_, body) = s
            .sys_text(Method::GET, "/system/function/private/history")
            .await;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
        if v["samples"].as_array().is_some_and(|a| a.len() >= 2) {
            Ok(v)
        } else {
            Err(body)
        }
    })
    .await;
    let last = h["samples"].as_array().unwrap().last().unwrap().clone();
    if last["cpuCores"].is_number() {
        assert!(
            last["memoryBytes"].as_u64().is_some_and(|m| m > 0),
            "CPU is measured but not memory: {last}"
        );
        wait_until(BOUND, "the memory graph has data", async || {
            let m = js(
                &c,
                "return Number(document.querySelector('.graphs').dataset.memory || 0);",
            )
            .await;
            m.as_f64().is_some_and(|m| m > 0.0).then_some(()).ok_or(m)
        })
        .await;
    }

    // Deploy: an unknown auth annotation is refused next to the annotations field; then a
    // bundle uploaded from the form is deployed and runs.
    let (digest, archive) = pack_script_bundle(
        &s.dir.tmp.path().join("form-bundle"),
        "formbundle",
        "#!/bin/sh\necho \"bundle says $(cat)\"\n",
    );
    click(&c, "#nav a[href='#/deploy']").await;
    wait_until(BOUND, "the deploy form", async || {
        c.find(Locator::Css("#d-bundle")).await.is_ok()
    })
    .await;
    assert_controls_labelled(&c, "deploy").await;
    assert_contrast(&c, "deploy").await;
    set_value(&c, "#d-name", "uploaded").await;
    set_value(&c, "#d-annotations", "com.fjord.auth=sometimes").await;
    c.find(Locator::Css("#d-bundle"))
        .await
        .unwrap()
        .send_keys(archive.to_str().unwrap())
        .await
        .unwrap();
    click(&c, "#deploy button[type=submit]").await;
    wait_text(&c, "#d-annotations-err", "com.fjord.auth").await;
    assert!(s.get_function("uploaded").await.is_none());
    let (st, _) = send_text(s.sys(Method::HEAD, &format!("/system/bundles/{digest}"))).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the bundle was uploaded under its digest"
    );
    set_value(&c, "#d-annotations", "note=from the form").await;
    click(&c, "#deploy button[type=submit]").await;
    wait_text(&c, "#fn-status", "1 of 1 replicas ready").await;
    let f = s.get_function("uploaded").await.unwrap();
    assert_eq!(f["image"], "uploaded:latest", "{f}");
    assert_eq!(f["annotations"]["note"], "from the form", "{f}");
    let (st, out) = s.call_text(Method::POST, "uploaded", "hi").await;
    assert_eq!((st, out.trim()), (StatusCode::OK, "bundle says hi"));

    // The fallback digest (for plain HTTP away from loopback) agrees with the browser's.
    let same = c
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             import('/ui/sha256.js').then(async (m) => {\
               const out = [];\
               for (const n of [0, 3, 55, 64, 1000, 70000]) {\
                 const b = new Uint8Array(n).map((_, i) => (i * 31 + 7) & 255);\
                 const d = new Uint8Array(await crypto.subtle.digest('SHA-256', b));\
                 out.push(m.sha256Hex(b) === [...d].map((x) => x.toString(16).padStart(2, '0')).join(''));\
               }\
               done(out);\
             }, (e) => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(same, json!([true, true, true, true, true, true]));

    // Secrets of another namespace.
    click(&c, "#nav a[href='#/secrets']").await;
    wait_until(BOUND, "team-a in the namespaces", async || {
        js(
            &c,
            "return [...document.querySelectorAll('#s-ns option')].map(o => o.value);",
        )
        .await
        .as_array()
        .is_some_and(|a| a.contains(&json!("team-a")))
    })
    .await;
    assert!(!text_of(&c, "#secrets").await.contains("team-secret"));
    c.find(Locator::Css("#s-ns"))
        .await
        .unwrap()
        .select_by_value("team-a")
        .await
        .unwrap();
    wait_text(&c, "#secrets", "team-secret").await;
    set_value(&c, "#s-name", "team-second").await;
    set_value(&c, "#s-value", "w").await;
    click(&c, "#secret-form button[type=submit]").await;
    wait_text(&c, "#secrets", "team-second").await;
    let (_, list) = s
        .sys_text(Method::GET, "/system/secrets?namespace=team-a")
        .await;
    assert!(list.contains("team-second"), "{list}");
    assert_controls_labelled(&c, "secrets").await;

    // The system page: connectors and what the data dir holds.
    click(&c, "#nav a[href='#/system']").await;
    wait_text(&c, "#system", "embedded: healthy").await;
    let page = wait_text(&c, "#system", "state.db").await;
    assert!(page.contains("cron") && page.contains("built in"), "{page}");
    assert!(page.contains("bundles"), "{page}");
    assert_contrast(&c, "system").await;
    screenshot(&c, "system").await;
    // The audit sees low contrast where there is some.
    js(
        &c,
        "const p = document.createElement('p'); p.style.color = '#bbb'; p.textContent = 'pale'; document.getElementById('system').append(p);",
    )
    .await;
    let low = low_contrast(&c).await;
    assert!(low.to_string().contains("pale"), "{low}");

    // A narrow screen (a phone): no page wider than the window.
    c.set_window_size(390, 844).await.unwrap();
    for (hash, ready) in [
        ("#/", "#functions thead"),
        ("#/fn/openfaas-fn/private", "#spec table"),
        ("#/deploy", "#deploy"),
        ("#/system", "#system table"),
    ] {
        c.goto(&s.ui_url(&format!("/ui/{hash}"))).await.unwrap();
        wait_until(BOUND, &format!("{hash} shows {ready}"), async || {
            c.find(Locator::Css(ready)).await.is_ok()
        })
        .await;
        assert_fits(&c, hash).await;
        if hash == "#/fn/openfaas-fn/private" {
            screenshot(&c, "narrow").await;
        }
    }
    c.close().await.unwrap();
}

/// Sign-in over plain HTTP: the session cookie's attributes, and a cookie-authenticated
/// change without the CSRF header (what a cross-site form would send) is refused.
#[tokio::test(flavor = "multi_thread")]
async fn cookie_sessions_need_the_csrf_header_for_changes() {
    let s = Server::start_opts(ServeOpts::args(&["--containers", "off"])).await;
    let password = s.password.clone().unwrap();
    s.deploy_ready(&http_fn("web", "v1")).await;

    // Wrong password: 401, no cookie, no browser dialog.
    let r = s
        .ui(Method::POST, "/ui/session")
        .json(&json!({"password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.headers().get("www-authenticate").is_none());
    // A form post (not JSON) is not a sign-in.
    let r = s
        .ui(Method::POST, "/ui/session")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("password={password}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = s
        .ui(Method::POST, "/ui/session")
        .json(&json!({"password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "no TLS here: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let session: Value = r.json().await.unwrap();
    assert_eq!(session["scope"], "admin");
    let csrf = session["csrf"].as_str().unwrap().to_string();

    let scale = |csrf: Option<&str>| {
        let mut rb = s
            .ui(Method::POST, "/system/scale-function/web")
            .header("cookie", &cookie)
            .json(&json!({"serviceName": "web", "replicas": 2}));
        if let Some(t) = csrf {
            rb = rb.header("x-fjord-csrf", t);
        }
        rb
    };
    // Reads work with the cookie alone, on the dashboard's listener only.
    let (st, _) = send_text(
        s.ui(Method::GET, "/system/functions")
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = send_text(
        s.open(Method::GET, "/system/functions")
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the main port took the cookie: {body}"
    );
    let (st, body) = send_text(
        s.open(Method::POST, "/system/scale-function/web")
            .header("cookie", &cookie)
            .header("x-fjord-csrf", &csrf)
            .json(&json!({"serviceName": "web", "replicas": 0})),
    )
    .await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the main port took the cookie: {body}"
    );
    // The main listener sends browsers to the dashboard's (same host name, its port).
    for (path, to) in [
        ("/ui/", "/ui/"),
        ("/ui/session", "/ui/session"),
        ("/ui", "/ui"),
    ] {
        let r = s.open(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(
            header(r.headers(), "location"),
            Some(s.ui_url(to).as_str()),
            "{path}"
        );
    }
    let r = s
        .open(Method::GET, "/")
        .header("accept", "text/html")
        .header(
            "host",
            format!("fjord.example:{}", s.addr.rsplit(':').next().unwrap()),
        )
        .send()
        .await
        .unwrap();
    let port = s.ui_base.rsplit(':').next().unwrap();
    assert_eq!(
        header(r.headers(), "location"),
        Some(format!("http://fjord.example:{port}/ui/").as_str())
    );
    // Functions answering on the dashboard's listener are sandboxed documents; on the main
    // one, untouched.
    let r = s.ui(Method::GET, "/function/web/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(r.headers(), "content-security-policy"),
        Some("sandbox")
    );
    assert_eq!(
        header(r.headers(), "x-content-type-options"),
        Some("nosniff")
    );
    let r = s.open(Method::GET, "/function/web/").send().await.unwrap();
    assert!(r.headers().get("content-security-policy").is_none());
    let (st, body) = send_text(scale(None)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("X-Fjord-CSRF"), "{body}");
    let (st, body) = send_text(scale(Some("forged"))).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.get_function("web").await.unwrap()["replicas"], 1);
    let (st, body) = send_text(scale(Some(&csrf))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");

    // The history endpoint answers with samples (every 5 s).
    let h = wait_until(BOUND, "a history sample", async || {
        let (st, body) = s
            .sys_text(Method::GET, "/system/function/web/history")
            .await;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{st} {body}: {e}"))?;
        if v["samples"].as_array().is_some_and(|a| !a.is_empty()) {
            Ok(v)
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(h["intervalSeconds"], 5);
    assert!(h["samples"][0]["desired"].is_u64(), "{h}");

    // The dashboard's files carry the CSP; `/` stays a 404 for API clients.
    let r = s.ui(Method::GET, "/ui/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let (st, _) = send_text(s.open(Method::GET, "/")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Sign-out ends the session (it needs the CSRF header too).
    let (st, _) = send_text(
        s.ui(Method::DELETE, "/ui/session")
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = send_text(
        s.ui(Method::DELETE, "/ui/session")
            .header("cookie", &cookie)
            .header("x-fjord-csrf", &csrf),
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = send_text(
        s.ui(Method::GET, "/system/functions")
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// With `--auth=false` the dashboard is told so (it shows a banner).
#[tokio::test(flavor = "multi_thread")]
async fn without_auth_the_dashboard_says_so() {
    let s = Server::start_opts(ServeOpts::args(&["--auth=false", "--containers", "off"])).await;
    let (st, body) = send_text(s.ui(Method::GET, "/ui/session")).await;
    assert_eq!(st, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["authDisabled"], true);
    let (st, page) = send_text(s.ui(Method::GET, "/ui/")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("Authentication is off"), "the banner's text");
}

/// Under TLS the session cookie is `Secure` (never sent over plain HTTP).
#[tokio::test(flavor = "multi_thread")]
async fn under_tls_the_session_cookie_is_secure() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = TestDir::new();
    let cert_path = dir.tmp.path().join("cert.pem");
    let key_path = dir.tmp.path().join("key.pem");
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let s = Server::start_tls(
        dir.clone(),
        ServeOpts::args(&[
            "--containers",
            "off",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ]),
        &ca.pem(),
    )
    .await;
    let password = s.password.clone().unwrap();
    let r = s
        .ui(Method::POST, "/ui/session")
        .json(&json!({"password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
}
