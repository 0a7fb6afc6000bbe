// Shared by thitl's pages: the bearer token (kept for this browser tab only) and API calls.

const TOKEN_KEY = "thitl-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An API error with the problem+json detail the server gave. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** Calls the API with the token; answers the parsed JSON, or throws ApiError. */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(0, `thitl cannot be reached (${error.message}). Is the server running?`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) throw new ApiError(response.status, (data && data.detail) || `${response.status} ${response.statusText}`);
  return data;
}

/** An object URL for an image the API serves (the token travels in a header, not the URL). */
export async function imageUrl(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (!response.ok) throw new ApiError(response.status, `the picture ${path} could not be loaded (${response.status})`);
  return URL.createObjectURL(await response.blob());
}

/** Builds an element: el("div", {class: "x"}, child, "text", ...). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    // Through the CSSOM: the pages' Content-Security-Policy refuses inline style attributes.
    if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function kbd(key) {
  return el("kbd", {}, key);
}

/**
 * Signs the page in: with no token (or a rejected one) shows the sign-in form in `view`; with a
 * token of a role the page is not for, says so in `message`; otherwise shows who is signed in in
 * `who` and calls `onReady(me)` (`me` from GET /v1/me).
 */
export async function signIn({ view, message, who, roles, purpose, onReady }) {
  const say = (text, kind) => message.replaceChildren(text ? el("p", { class: `message ${kind}` }, text) : "");
  const form = () => {
    who.textContent = "";
    const input = el("input", { type: "password", id: "token", placeholder: "thitl_…", autocomplete: "off", "aria-label": "token" });
    const card = el("form", { class: "card" },
      el("h2", {}, "Sign in"),
      el("p", { class: "muted" }, `Paste your token (${purpose}), then press `, kbd("Enter"), "."),
      input);
    card.addEventListener("submit", (event) => {
      event.preventDefault();
      setToken(input.value);
      signIn({ view, message, who, roles, purpose, onReady });
    });
    view.replaceChildren(card);
    input.focus();
  };
  if (!token()) return form();
  let me;
  try {
    me = await api("GET", "/v1/me");
  } catch (error) {
    if (error.status === 401) {
      setToken(null);
      say("This token is not valid: it is mistyped or was revoked. Ask an administrator for a token.", "error");
      return form();
    }
    return say(error.message, "error");
  }
  who.textContent = `${me.name} (${me.role}) · `;
  const out = el("a", { href: "#", id: "sign-out" }, "sign out");
  out.addEventListener("click", (event) => { event.preventDefault(); setToken(null); say(""); form(); });
  who.append(out);
  if (!roles.includes(me.role)) {
    view.replaceChildren();
    return say(`This token belongs to ${me.name}, a ${me.role}: this page is for ${purpose}. Sign out and use such a token.`, "error");
  }
  say("");
  return onReady(me);
}

/** `rate` as a percentage with one decimal. */
export function percent(rate) {
  return `${(100 * rate).toFixed(1)}%`;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element: svg("rect", {x: 1, ...}, children...). */
export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
