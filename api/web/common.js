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
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function kbd(key) {
  return el("kbd", {}, key);
}
