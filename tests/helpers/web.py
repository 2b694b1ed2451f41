"""Signing in through the web pages, as a browser does."""

from __future__ import annotations

import re
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from tests.helpers.world import PASSWORD

# The hidden CSRF field of the login form.
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


async def form_login(
    client: AsyncTestClient[Any], username: str, password: str = PASSWORD, next: str = ""
) -> httpx.Response:
    """Sign in through the login form, as a browser does: GET the form, POST it back."""
    page = await client.get("/login")
    assert page.status_code == 200, page.text
    match = CSRF_FIELD.search(page.text)
    assert match is not None
    data = {"username": username, "password": password, "csrf": match[1], "next": next}
    return await client.post("/login", data=data, follow_redirects=False)
