"""A small HTTP client for the console's tests: keeps the cookies it is given (Secure ones included, as a
browser does on loopback) and pulls CSRF tokens out of forms."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

import aiohttp


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert found, "no CSRF token in the page"
        return found.group(1)


@dataclass
class Client:
    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    async def request(self, method: str, path: str, **kwargs: object) -> Reply:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with aiohttp.ClientSession() as session, session.request(
                method, self.base.rstrip("/") + path, headers=headers, allow_redirects=False, **kwargs) as response:
            body = await response.read()
            set_cookies = response.headers.getall("Set-Cookie", [])
            for raw in set_cookies:
                for name, morsel in SimpleCookie(raw).items():
                    if morsel["max-age"] == "0" or 'expires=Thu, 01 Jan 1970' in raw:
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            return Reply(response.status, dict(response.headers), set_cookies, body)

    async def get(self, path: str, **kwargs: object) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: object) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def sign_in(self, reviewer: str, token: str) -> Reply:
        form = await self.get("/signin")
        return await self.post("/signin", data={"reviewer": reviewer, "token": token, "csrf": form.csrf()})
