//! One module per page or feature, each with its components and server functions.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod jobs;
pub mod objects;
pub mod overview;
pub mod processors;
pub mod routes;
pub mod sinks;
pub mod sources;
pub mod streams;
pub mod tokens;
pub mod workers;

use leptos::prelude::*;

#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
        resp.set_status(axum::http::StatusCode::NOT_FOUND);
    }
    view! {
        <main class="mx-auto max-w-lg py-24 text-center">
            <h1 class="text-2xl font-semibold">"Page not found"</h1>
            <p class="mt-2 text-slate-500">"There is nothing at this address."</p>
            <a href="/" class="mt-6 inline-block text-indigo-600 hover:underline">"Back to the overview"</a>
        </main>
    }
}
