//! Keystone's console. Each page module holds its components and the server functions they call;
//! server-only code sits behind the `ssr` feature so the browser bundle never sees the database.

#[cfg(feature = "ssr")]
pub mod charts;
pub mod components;
pub mod error;
pub mod pages;
pub mod session;
#[cfg(feature = "ssr")]
pub mod state;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{ParentRoute, Route, Router, Routes};
use leptos_router::{path, SsrMode};

/// The stylesheet compiled from the classes in this crate (see `build.rs`).
#[cfg(feature = "ssr")]
pub const STYLESHEET: &str = include_str!(concat!(env!("OUT_DIR"), "/keystone.css"));

/// The console's Content-Security-Policy, minus scripts. Responses that are not console pages
/// (the JSON API, files, errors) carry it as is: no script may run from them at all. (A function,
/// not a constant: the stylesheet test reads string constants as class lists.)
pub fn base_policy() -> &'static str {
    "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'self'; form-action 'self'; \
     script-src 'none'"
}

/// A console page's policy: only scripts carrying this response's nonce run (the hydration
/// script), and what they load (`'strict-dynamic'`: the bundle and its WebAssembly); inline
/// handlers and injected `<script>` tags never do.
pub fn page_policy(nonce: &str) -> String {
    let base = base_policy().trim_end_matches("script-src 'none'");
    format!("{base}script-src 'nonce-{nonce}' 'strict-dynamic' 'wasm-unsafe-eval'")
}

/// Sets [`page_policy`] with this response's nonce (leptos_axum makes one per request and puts it
/// on the hydration scripts).
#[cfg(feature = "ssr")]
fn provide_page_policy() {
    use axum::http::{header, HeaderValue};
    let (Some(nonce), Some(response)) = (leptos::nonce::use_nonce(), use_context::<leptos_axum::ResponseOptions>())
    else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(&page_policy(&nonce)) {
        response.insert_header(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// The HTML document around the app, rendered on the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body class="bg-slate-50 text-slate-900">
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    #[cfg(feature = "ssr")]
    provide_page_policy();
    // Marks the page once the bundle has hydrated it, so browser tests can tell a page that
    // merely rendered from one whose scripts run (under the policy above).
    Effect::new(|_| {
        let _ = document().body().map(|b| b.set_attribute("data-hydrated", "true"));
    });
    view! {
        <Stylesheet id="keystone" href="/pkg/keystone.css"/>
        <Title text="Keystone"/>
        // Every route renders in SsrMode::Async: the page is complete before the first byte, so
        // sign-in redirects are real 302s and every page works without JavaScript.
        <Router>
            <Routes fallback=|| view! { <pages::NotFound/> }>
                <Route path=path!("/login") view=pages::auth::LoginPage ssr=SsrMode::Async/>
                <ParentRoute path=path!("") view=components::Shell ssr=SsrMode::Async>
                    <Route path=path!("") view=pages::overview::OverviewPage ssr=SsrMode::Async/>
                    <Route path=path!("/streams") view=pages::streams::StreamsPage ssr=SsrMode::Async/>
                    <Route path=path!("/streams/new") view=pages::streams::StreamFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/streams/:team/:name") view=pages::streams::StreamDetailPage ssr=SsrMode::Async/>
                    <Route path=path!("/streams/:team/:name/edit") view=pages::streams::StreamFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/sinks") view=pages::sinks::SinksPage ssr=SsrMode::Async/>
                    <Route path=path!("/sinks/new") view=pages::sinks::SinkFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/sinks/:team/:name") view=pages::sinks::SinkDetailPage ssr=SsrMode::Async/>
                    <Route path=path!("/sinks/:team/:name/edit") view=pages::sinks::SinkFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/sources") view=pages::sources::SourcesPage ssr=SsrMode::Async/>
                    <Route path=path!("/sources/new") view=pages::sources::SourceFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/sources/:team/:name") view=pages::sources::SourceDetailPage ssr=SsrMode::Async/>
                    <Route path=path!("/sources/:team/:name/edit") view=pages::sources::SourceFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/routes") view=pages::routes::RoutesPage ssr=SsrMode::Async/>
                    <Route path=path!("/routes/new") view=pages::routes::RouteFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/routes/:team/:name") view=pages::routes::RouteDetailPage ssr=SsrMode::Async/>
                    <Route path=path!("/routes/:team/:name/edit") view=pages::routes::RouteFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/routes/:team/:name/dashboard") view=pages::dashboard::RouteDashboardPage ssr=SsrMode::Async/>
                    <Route path=path!("/processors") view=pages::processors::ProcessorsPage ssr=SsrMode::Async/>
                    <Route path=path!("/processors/new") view=pages::processors::ProcessorFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/processors/:team/:name") view=pages::processors::ProcessorDetailPage ssr=SsrMode::Async/>
                    <Route path=path!("/processors/:team/:name/edit") view=pages::processors::ProcessorFormPage ssr=SsrMode::Async/>
                    <Route path=path!("/jobs") view=pages::jobs::JobsPage ssr=SsrMode::Async/>
                    <Route path=path!("/workers") view=pages::workers::WorkersPage ssr=SsrMode::Async/>
                    <Route path=path!("/audit") view=pages::audit::AuditPage ssr=SsrMode::Async/>
                    <Route path=path!("/tokens") view=pages::tokens::TokensPage ssr=SsrMode::Async/>
                    <Route path=path!("/admin") view=pages::admin::AdminPage ssr=SsrMode::Async/>
                    <Route path=path!("/approvals") view=pages::approvals::ApprovalsPage ssr=SsrMode::Async/>
                    <Route path=path!("/approvals/:id") view=pages::approvals::ChangeRequestPage ssr=SsrMode::Async/>
                </ParentRoute>
            </Routes>
        </Router>
    }
}

#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
}
