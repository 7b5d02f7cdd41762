//! `tracehop console` in a real browser: Debian's headless Chromium driven
//! over WebDriver (`chromedriver`, through fantoccini), against the console
//! served on a free port of 127.0.0.1 in front of a whole system (its own
//! NATS server and database, every service a process). The browser places
//! an order and sees its trace drawn, switches a scenario and sees it in the
//! list and in the next trace, runs and stops a load, and sees the
//! sentinel's alert appear when a consumer is killed, with no reload.
//!
//! With `TRACEHOP_WRITE_SCREENSHOTS=1` each page is saved to
//! `docs/console/<page>.png`, for the README.
//!
//! Chromium and ChromeDriver are Debian packages (`chromium`,
//! `chromium-driver`); without them these tests fail and say how to install
//! them.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracehop::console::{self, Config};
use tracehop_scenarios::Scenario;
use tracehop_spanfeed::fetch_trace;
use tracehop_testkit::{NatsServer, TestSystem, free_port};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const FORM: &str = "application/x-www-form-urlencoded";
/// How long a page has to show what a step waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// Chromium under ChromeDriver, both in a process group of their own that
/// is killed on drop, with a fresh profile.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the console's browser tests need Debian's Chromium and ChromeDriver; \
                 install them with `apt-get install -y chromium chromium-driver` (.ci/run does)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("failed to start chromedriver");
        let profile = tempfile::Builder::new().prefix("tracehop-chromium-").tempdir().unwrap();
        let mut browser = Self { client: None, driver, _profile: profile };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(15), "chromedriver did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The flags this machine needs: without the background-networking
        // ones Chromium keeps trying the closed network.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--hide-scrollbars",
        ]
        .into_iter()
        .map(str::to_string)
        .chain([format!("--user-data-dir={}", browser._profile.path().display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("failed to start a Chromium session");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium runs in chromedriver's process group: both go.
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Kills a service the console started (the test system knows only its own).
struct StopOnDrop(tracehop_launcher::Launcher, &'static str);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.kill_now(self.1);
    }
}

/// The console in this test's runtime, in front of `system`; stops when
/// the sender is dropped.
async fn start_console(
    nats: async_nats::Client,
    launcher: tracehop_launcher::Launcher,
    gateway_url: String,
    token: Option<String>,
) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config { addr, token, gateway_url, launcher, nats, changed_by: "console test".to_string() };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        console::serve(listener, config, async move {
            let _ = stopped.await;
        })
        .await
        .expect("the console failed");
    });
    (format!("http://{addr}"), stop)
}

/// Runs `script` (which returns a boolean) until it is true.
async fn until(client: &Client, what: &str, script: &str) {
    until_within(client, what, script, PATIENCE).await;
}

async fn until_within(client: &Client, what: &str, script: &str, patience: Duration) {
    let started = Instant::now();
    loop {
        let value = client.execute(script, Vec::new()).await.unwrap_or(Value::Null);
        if value == Value::Bool(true) {
            return;
        }
        if started.elapsed() > patience {
            let text = client.execute("return document.body.innerText", Vec::new()).await.unwrap_or(Value::Null);
            panic!("the page never showed {what}; it shows:\n{}", text.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap_or_else(|_| panic!("no {css}")).text().await.unwrap()
}

/// Saves the whole page as `docs/console/<name>.png` when asked to.
async fn screenshot(client: &Client, name: &str) {
    if std::env::var("TRACEHOP_WRITE_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    let height = client.execute("return document.documentElement.scrollHeight", Vec::new()).await.unwrap();
    let height = height.as_u64().unwrap_or(900).clamp(600, 2400) as u32;
    client.set_window_size(1280, height + 90).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = client.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    client.set_window_size(1280, 900).await.unwrap();
}

/// Places an order from the form, paid with the test card `card`, which
/// must come out `outcome`; returns its trace's address.
async fn order_from_page(
    client: &Client,
    base: &str,
    premium: bool,
    skus: &[(&str, u32)],
    card: &str,
    outcome: &str,
) -> String {
    client.goto(&format!("{base}/order")).await.unwrap();
    let selects = client.find_all(Locator::Css("select[name=sku]")).await.unwrap();
    let quantities = client.find_all(Locator::Css("input[name=quantity]")).await.unwrap();
    for (line, select) in selects.iter().enumerate() {
        let value = skus.get(line).map_or("", |(sku, _)| sku);
        select.select_by_value(value).await.unwrap();
        if let Some((_, quantity)) = skus.get(line) {
            quantities[line].clear().await.unwrap();
            quantities[line].send_keys(&quantity.to_string()).await.unwrap();
        }
    }
    if premium {
        client.find(Locator::Css("input[name=premium]")).await.unwrap().click().await.unwrap();
    }
    client.find(Locator::Css("select[name=card]")).await.unwrap().select_by_value(card).await.unwrap();
    client.find(Locator::Css("#place-order")).await.unwrap().click().await.unwrap();
    until(client, "the gateway's answer", "return !!document.querySelector('#order-result [data-outcome]')").await;
    let answer = client.find(Locator::Css("#order-result [data-outcome]")).await.unwrap();
    let shown = answer.attr("data-outcome").await.unwrap();
    assert_eq!(shown.as_deref(), Some(outcome), "{}", answer.text().await.unwrap());
    let link = client.find(Locator::Css("#order-result a.trace-link")).await.unwrap();
    link.attr("href").await.unwrap().expect("a link to the trace")
}

/// Clicks `change` on `scenario`'s card and waits until it says `state`.
async fn flip_from_page(client: &Client, base: &str, scenario: &str, change: &str, state: &str) {
    client.goto(&format!("{base}/scenarios")).await.unwrap();
    let card = format!("article[data-scenario=\"{scenario}\"]");
    let button = client.find(Locator::Css(&format!("{card} button[data-change={change}]"))).await.unwrap();
    button.click().await.unwrap();
    let script = format!("return document.querySelector('{card}').dataset.state === '{state}'");
    until(client, &format!("{scenario} {state}"), &script).await;
}

/// Waits until the trace page has drawn a settled trace holding spans of
/// every one of `services`.
async fn trace_drawn(client: &Client, services: &[&str]) {
    let wanted = serde_json::to_string(services).unwrap();
    until(
        client,
        &format!("a settled trace with spans of {wanted}"),
        &format!(
            "const have = new Set([...document.querySelectorAll('#waterfall details')].map(d => d.dataset.service));
             return document.getElementById('trace').dataset.state === 'settled'
                 && {wanted}.every(s => have.has(s));"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_places_orders_flips_scenarios_draws_traces_and_shows_alerts_live() {
    // A short deadline, so that the sentinel's missed-by spans come soon.
    let mut system = TestSystem::start_with(&[("SENTINEL_DEADLINE_MS", "2000")]).await.unwrap();
    let (base, _stop) =
        start_console(system.nats.clone(), system.launcher.clone(), system.gateway_url.clone(), None).await;
    let browser = Browser::start().await;
    let client = browser.client();

    // An order placed from the page, and its trace drawn.
    let trace_href =
        order_from_page(client, &base, false, &[("KB-001", 2), ("CB-004", 1)], "approved", "confirmed").await;
    let page = client.source().await.unwrap();
    for secret in [CARD_OK, "4242 4242", "@example.com"] {
        assert!(!page.contains(secret), "the order page shows {secret:?}");
    }
    screenshot(client, "order").await;
    let trace_id = trace_href.trim_start_matches("/trace/").to_string();
    assert_eq!(trace_id.len(), 32, "{trace_href}");
    client.goto(&format!("{base}{trace_href}")).await.unwrap();
    trace_drawn(client, &["gateway", "order", "inventory", "payment", "loyalty", "notification", "analytics"]).await;
    let spans = fetch_trace(&system.js, &trace_id).await.unwrap();
    let drawn = client.find_all(Locator::Css("#waterfall details")).await.unwrap().len();
    assert_eq!(drawn, spans.len(), "every span of the feed is drawn once");
    // The three consumers of orders.confirmed, each linked to the producer.
    until(
        client,
        "lines from the producer to its consumers",
        "return Number(document.getElementById('links').dataset.lines) >= 3",
    )
    .await;
    assert!(text_of(client, "#explain").await.contains("took"), "the explain summary is above the waterfall");
    // A span's attributes on a click.
    let root = client.find(Locator::Css("#waterfall details[data-service=gateway] > summary")).await.unwrap();
    root.click().await.unwrap();
    let attributes = text_of(client, "#waterfall details[open] .attrs").await;
    assert!(attributes.contains("http.response.status_code") && attributes.contains("201"), "{attributes}");
    screenshot(client, "trace").await;

    // A declined card: the calls that were declined are marked failed.
    let trace_href = order_from_page(client, &base, false, &[("CB-004", 1)], "declined", "failed").await;
    assert!(text_of(client, "#order-result").await.contains("payment_declined"));
    client.goto(&format!("{base}{trace_href}")).await.unwrap();
    trace_drawn(client, &["gateway", "order", "payment"]).await;
    let failed = client.find_all(Locator::Css("#waterfall details.failed > summary")).await.unwrap();
    assert!(!failed.is_empty(), "no span marked failed");
    for row in failed {
        assert!(row.text().await.unwrap().contains("payment_declined"), "a failure says what failed");
    }

    // A scenario switched on from the page: in the list, in the bucket (as
    // flipped from the console), and in the next trace.
    flip_from_page(client, &base, "loyalty-n-plus-one", "on", "ON").await;
    assert!(
        text_of(client, "article[data-scenario=loyalty-n-plus-one]").await.contains("last flipped by console test")
    );
    let stored = tracehop_scenarios::read_all(&system.js).await.unwrap();
    let switch = &stored.iter().find(|(s, _)| *s == Scenario::LoyaltyNPlusOne).unwrap().1;
    assert!(switch.on && switch.changed_by == "console test", "{switch:?}");
    screenshot(client, "scenarios").await;
    // Services see a flip within a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let premium = [("KB-001", 1), ("MS-002", 1), ("HS-005", 1)];
    let trace_href = order_from_page(client, &base, true, &premium, "approved", "confirmed").await;
    client.goto(&format!("{base}{trace_href}")).await.unwrap();
    trace_drawn(client, &["gateway", "loyalty"]).await;
    until(
        client,
        "the scenario named in the trace",
        "return !!document.querySelector('.trace-head [data-scenario=\"loyalty-n-plus-one\"]')",
    )
    .await;
    flip_from_page(client, &base, "loyalty-n-plus-one", "off", "off").await;

    // The slowest checkouts, each a link to its trace.
    client.goto(&format!("{base}/slowest?since=15m")).await.unwrap();
    let links = client.find_all(Locator::Css("table.slowest a.trace-link")).await.unwrap();
    assert!(links.len() >= 2, "both checkouts are ranked");
    screenshot(client, "slowest").await;

    // A bounded load run from the page, then one stopped early.
    client.goto(&format!("{base}/load")).await.unwrap();
    let set = |name: &'static str, value: &'static str| async move {
        let input = client.find(Locator::Css(&format!("form.load input[name={name}]"))).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    };
    set("rate", "10").await;
    set("seconds", "2").await;
    client.find(Locator::Css("#start-load")).await.unwrap().click().await.unwrap();
    // The run, then the drain of the consumers (up to a minute).
    let finished = "return !!document.querySelector('[data-load=finished]')";
    until_within(client, "the run finished", finished, Duration::from_secs(90)).await;
    let report = text_of(client, "[data-load=finished]").await;
    assert!(report.contains("load: 20 checkouts at 10/s"), "{report}");
    assert!(report.contains("201 confirmed"), "{report}");
    screenshot(client, "load").await;
    set("rate", "10").await;
    set("seconds", "120").await;
    client.find(Locator::Css("#start-load")).await.unwrap().click().await.unwrap();
    until(client, "the run going", "return !!document.querySelector('[data-load=running]')").await;
    client.find(Locator::Css("#stop-load")).await.unwrap().click().await.unwrap();
    until_within(client, "the run stopped", finished, Duration::from_secs(90)).await;
    let report = text_of(client, "[data-load=finished]").await;
    assert!(report.contains("stopped early"), "{report}");

    // A consumer killed: the alert appears on the live page, which is not
    // reloaded; then it recovers.
    client.goto(&format!("{base}/")).await.unwrap();
    until(
        client,
        "analytics healthy",
        "const row = document.querySelector('#live-consumers tr[data-consumer=\"analytics\"]'); return !!row && row.className === 'ok'",
    )
    .await;
    client.execute("window.notReloaded = true", Vec::new()).await.unwrap();
    system.kill_service("analytics").unwrap();
    until(
        client,
        "the alert that analytics is down",
        "return !!document.querySelector('#live-alerts li[data-kind=\"consumer_down\"][data-consumer=\"analytics\"]')
             && !!document.querySelector('#live-alert-log li[data-kind=\"consumer_down\"][data-consumer=\"analytics\"]')",
    )
    .await;
    assert_eq!(client.execute("return window.notReloaded === true", Vec::new()).await.unwrap(), Value::Bool(true));
    assert!(text_of(client, "#live-consumers").await.contains("down"));
    screenshot(client, "live").await;

    // An order analytics misses: its trace gets the sentinel's span, marked.
    let trace_href = order_from_page(client, &base, false, &[("MS-002", 1)], "approved", "confirmed").await;
    let started = Instant::now();
    loop {
        client.goto(&format!("{base}{trace_href}")).await.unwrap();
        trace_drawn(client, &["gateway", "loyalty"]).await;
        if !client.find_all(Locator::Css("#waterfall details.missed[data-service=sentinel]")).await.unwrap().is_empty()
        {
            break;
        }
        // Drawn complete before the sentinel's span came: look again.
        assert!(started.elapsed() < PATIENCE, "no missed-by span in the trace");
    }
    let missed = text_of(client, "#waterfall details.missed > summary").await;
    assert!(missed.contains("missed by analytics"), "{missed}");
    assert!(text_of(client, "#explain").await.contains("missed by a consumer"));
    screenshot(client, "trace-missed").await;
    // Started again from the page, as `tracehop start` would: it answers,
    // and the recovery comes in live.
    client.goto(&format!("{base}/")).await.unwrap();
    // The console is its parent now; whatever happens, it goes at the end.
    let _analytics = StopOnDrop(system.launcher.clone(), "analytics");
    client.find(Locator::Css("#service-name")).await.unwrap().select_by_value("analytics").await.unwrap();
    client.find(Locator::Css("#start-service")).await.unwrap().click().await.unwrap();
    until(
        client,
        "analytics started",
        "const done = document.querySelector('[data-service-action]');
         return !!done && done.textContent.startsWith('analytics started')",
    )
    .await;
    client.execute("window.notReloaded = true", Vec::new()).await.unwrap();
    until(
        client,
        "analytics recovered",
        "return !!document.querySelector('#live-alert-log li[data-kind=\"consumer_recovered\"][data-consumer=\"analytics\"]')",
    )
    .await;
    assert_eq!(client.execute("return window.notReloaded === true", Vec::new()).await.unwrap(), Value::Bool(true));
    browser.close().await;
}

/// The guard, over plain HTTP: another host name, a form from another
/// origin and a missing token are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_other_hosts_other_origins_and_missing_tokens() {
    let nats_server = NatsServer::start().await.unwrap();
    let nats = nats_server.connect_command().await.unwrap();
    let run_dir = tempfile::tempdir().unwrap();
    let launcher =
        tracehop_launcher::Launcher::new(tracehop_launcher::default_bin_dir().unwrap(), run_dir.path().to_path_buf());
    // Served beyond this machine, a console without a token does not start.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = Config {
        addr: "192.0.2.1:8088".parse().unwrap(),
        token: None,
        gateway_url: "http://127.0.0.1:9".to_string(),
        launcher: launcher.clone(),
        nats: nats.clone(),
        changed_by: "console test".to_string(),
    };
    let refused = console::serve(listener, open, async {}).await.unwrap_err();
    assert!(refused.to_string().contains("needs a token"), "{refused}");

    let token = "a-token-of-the-tests-0123456789".to_string();
    let (base, _stop) = start_console(nats, launcher, "http://127.0.0.1:9".to_string(), Some(token.clone())).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    let plain = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(plain.status(), 401);
    let rebound =
        http.get(format!("{base}/")).header("host", "attacker.example:80").bearer_auth(&token).send().await.unwrap();
    assert_eq!(rebound.status(), 421);
    let with_token = http.get(format!("{base}/scenarios?token={token}")).send().await.unwrap();
    assert_eq!(with_token.status(), 303);
    let cookie = with_token.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    // A form post with the given `Origin` and `Sec-Fetch-Site`, if any.
    let post = |path: &'static str, origin: Option<&'static str>, site: Option<&'static str>, body: &'static str| {
        let mut request =
            http.post(format!("{base}{path}")).header("cookie", &cookie).header("content-type", FORM).body(body);
        for (name, value) in [("origin", origin), ("sec-fetch-site", site)] {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        async move { request.send().await.unwrap() }
    };
    let flip = "name=payment-down&change=on";
    assert_eq!(post("/scenarios", Some("http://attacker.example"), None, flip).await.status(), 403);
    assert_eq!(post("/scenarios", Some("null"), Some("cross-site"), flip).await.status(), 403);
    // The form the page itself posts is taken, and checked: an unknown
    // scenario is refused by name.
    let same_site = post("/scenarios", None, Some("same-origin"), "name=no-such-thing&change=on").await;
    assert_eq!(same_site.status(), 400);
    assert!(same_site.text().await.unwrap().contains("no such scenario"));
    // An order the gateway's rules refuse never leaves the console, and the
    // refusal names the field.
    let order = post("/order", None, None, "customer=alice&sku=KB-001&quantity=0&card=approved").await;
    let body = order.text().await.unwrap();
    assert!(body.contains("data-outcome=\"invalid\"") && body.contains("items[0].quantity"), "{body}");
}
