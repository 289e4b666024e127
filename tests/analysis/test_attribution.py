from __future__ import annotations

from apiscope.analysis.attribution import (
    RouteMatcher,
    app_roots,
    dispatch_lines,
    is_app_frame,
    library_call,
    request_frame,
    user_frame,
)
from apiscope.model import Frame, RouteInfo

APP = "/srv/shop/shop/api.py"
ROUTES = [
    RouteInfo("GET", "/items/{item_id}", "shop.api:read_item", APP, 10, True),
    RouteInfo("HEAD", "/items/{item_id}", "shop.api:read_item", APP, 10, True),
    RouteInfo("POST", "/items", "shop.api:create_item", APP, 20, False),
    RouteInfo("GET", "/reports", "shop.api:Reports.summary", APP, 30, True),
]
LOOP = [
    Frame("run", "/usr/lib/python3.11/asyncio/runners.py", 118),
    Frame("__call__", "/venv/lib/python3.11/site-packages/starlette/routing.py", 700),
]


def test_endpoint_of_matches_file_and_function_leaf_most_wins() -> None:
    matcher = RouteMatcher(ROUTES)
    stack = [*LOOP, Frame("create_item", APP, 22), Frame("read_item", APP, 12),
             Frame("dumps", "/usr/lib/python3.11/json/__init__.py", 231)]
    assert matcher.endpoint_of(stack) == "GET /items/{item_id}"  # GET preferred over HEAD
    assert matcher.endpoint_of([*LOOP, Frame("create_item", APP, 22)]) == "POST /items"
    assert matcher.endpoint_of([*LOOP, Frame("summary", APP, 31)]) == "GET /reports"
    assert matcher.endpoint_of([*LOOP, Frame("Reports.summary", APP, 31)]) == "GET /reports"
    # same function name in another file is not the handler
    assert matcher.endpoint_of([*LOOP, Frame("read_item", "/srv/other.py", 3)]) is None
    assert matcher.endpoint_of(LOOP) is None
    assert matcher.handler_of("POST /items") == "shop.api:create_item"


def test_a_method_of_another_class_of_the_same_name_is_not_the_handler() -> None:
    # An auth module's logout endpoint is routed, its login endpoint beside it is not (it is
    # mounted whole): login's `post` must not be charged to logout's route.
    auth = "/venv/lib/python3.12/site-packages/authlib_x/endpoints.py"
    matcher = RouteMatcher([RouteInfo("POST", "/logout/", "authlib_x.endpoints:Logout.post",
                                      auth, 92, True)])
    assert matcher.endpoint_of([*LOOP, Frame("Login.post", auth, 274)]) is None
    assert matcher.endpoint_of([*LOOP, Frame("Logout.post", auth, 95)]) == "POST /logout/"
    # Frames named by the function alone (Python before 3.11) still match by that name.
    assert matcher.endpoint_of([*LOOP, Frame("post", auth, 95)]) == "POST /logout/"


def test_short_file_names_match_full_route_files() -> None:
    matcher = RouteMatcher(ROUTES)
    assert matcher.endpoint_of([Frame("read_item", "shop/api.py", 12)]) == "GET /items/{item_id}"


def test_app_frames_exclude_stdlib_third_party_and_apiscope() -> None:
    roots = app_roots(ROUTES)
    assert roots == ("/srv/shop/shop",)
    assert is_app_frame(Frame("f", APP, 1), roots)
    assert is_app_frame(Frame("render", "/srv/shop/helpers.py", 6), roots)
    assert not is_app_frame(Frame("sleep", "/usr/lib/python3.11/asyncio/tasks.py", 1), roots)
    assert not is_app_frame(
        Frame("f", "/home/app/.pyenv/versions/3.11.7/lib/python3.11/selectors.py", 1), roots)
    assert not is_app_frame(Frame("f", "/venv/lib/python3.11/site-packages/x/y.py", 1), roots)
    assert not is_app_frame(Frame("f", "<frozen importlib._bootstrap>", 1), roots)
    import apiscope

    tool_file = str(apiscope.__file__)
    assert not is_app_frame(Frame("f", tool_file, 1), roots)


def test_installed_app_modules_are_app_code() -> None:
    site = "/venv/lib/python3.11/site-packages"
    routes = [RouteInfo("GET", "/", "shop.web.views:index", f"{site}/shop/web/views.py", 3, True),
              RouteInfo("GET", "/x", "single:x", f"{site}/single.py", 3, True)]
    roots = app_roots(routes)
    assert f"{site}/shop" in roots and f"{site}/single.py" in roots
    assert is_app_frame(Frame("helper", f"{site}/shop/db.py", 9), roots)
    assert not is_app_frame(Frame("get", f"{site}/httpx/_client.py", 9), roots)
    stack = [Frame("index", f"{site}/shop/web/views.py", 5),
             Frame("helper", f"{site}/shop/db.py", 9),
             Frame("execute", f"{site}/sqlalchemy/engine.py", 1)]
    assert user_frame(stack, roots) == Frame("helper", f"{site}/shop/db.py", 9)
    assert user_frame(stack[2:], roots) is None


def test_a_serving_frameworks_generic_handler_dispatching_to_the_users_code_is_no_app() -> None:
    # BentoML serves each API of a user's service through its own `api_endpoint_wrapper`:
    # every handler is installed, yet the application is the service module it calls. Taken
    # for the app, BentoML's middleware was the "line" of a loop hold at its response write.
    site = "/venv/lib/python3.11/site-packages"
    bento = f"{site}/_bentoml_impl/server/app.py"
    routes = [RouteInfo("POST", "/proba", "_bentoml_impl.server.app:"
                        "ServiceAppFactory.api_endpoint_wrapper", bento, 715, True)]
    dispatch = [*LOOP, Frame("ServiceAppFactory.api_endpoint_wrapper", bento, 719),
                Frame("ServiceAppFactory.api_endpoint", bento, 807)]
    service = [*dispatch, Frame("Classifier.proba", "/srv/bento/service.py", 24),
               Frame("predict_proba", f"{site}/sklearn/ensemble/_forest.py", 956)]
    assert app_roots(routes) == (f"{site}/_bentoml_impl",)
    assert app_roots(routes, [dispatch]) == (f"{site}/_bentoml_impl",)
    assert app_roots(routes, [dispatch, service]) == ()
    assert app_roots(routes, [dispatch], own_code=True) == ()
    # A launcher of the app's own above the loop (`main()` calling `uvicorn.run`) runs none
    # of the requests' code: the installed app stays the app.
    launched = [Frame("main", "/srv/run.py", 8), *dispatch]
    assert app_roots(routes, [launched]) == (f"{site}/_bentoml_impl",)
    assert RouteMatcher(routes, roots=()).roots == ()
    assert RouteMatcher(routes).roots == (f"{site}/_bentoml_impl",)


def test_framework_routes_do_not_make_the_framework_application_code() -> None:
    from apiscope.analysis.attribution import app_roots, is_app_frame
    from apiscope.model import Frame, RouteInfo

    site = "/srv/venv/lib/python3.11/site-packages"
    routes = [
        RouteInfo("GET", "/items/{item_id}", "shop.api:read_item", "/srv/shop/api.py", 10, True),
        RouteInfo("GET", "/openapi.json", "fastapi.applications:openapi",
                  f"{site}/fastapi/applications.py", 1000, True),
    ]
    roots = app_roots(routes)
    assert roots == ("/srv/shop",)
    assert not is_app_frame(Frame("run_endpoint_function", f"{site}/fastapi/routing.py", 1), roots)
    assert is_app_frame(Frame("read_item", "/srv/shop/api.py", 12), roots)


def test_a_librarys_routes_beside_the_apps_do_not_make_the_library_application_code() -> None:
    # Litestar serves /schema from its own package; an auth library mounts its login routes.
    # Neither is the application's code when the application's handlers live elsewhere.
    site = "/srv/venv/lib/python3.11/site-packages"
    routes = [
        RouteInfo("GET", "/notes", "notes.app:list_notes", "/srv/notes/app.py", 10, True),
        RouteInfo("GET", "/schema", "litestar.openapi.controller:OpenAPIController.root",
                  f"{site}/litestar/openapi/controller.py", 200, True),
        RouteInfo("POST", "/auth/login", "fastapi_users.router.auth:login",
                  f"{site}/fastapi_users/router/auth.py", 40, True),
        RouteInfo("GET", "/admin/", "django.contrib.admin.sites:AdminSite.index",
                  f"{site}/django/contrib/admin/sites.py", 500, False),
    ]
    roots = app_roots(routes)
    assert roots == ("/srv/notes",)
    stack = [Frame("list_notes", "/srv/notes/app.py", 12),
             Frame("capture_response_started",
                   f"{site}/litestar/middleware/_internal/exceptions/middleware.py", 155)]
    assert user_frame(stack, roots) == stack[0]
    assert user_frame(stack[1:], roots) is None
    assert not is_app_frame(Frame("login", f"{site}/fastapi_users/router/auth.py", 41), roots)


def test_the_agent_is_not_application_code_whichever_apiscope_injected_it() -> None:
    from apiscope.analysis.attribution import is_app_frame
    from apiscope.model import Frame

    # A session collected by another installation of apiscope, analysed here.
    agent = Frame("AgentMiddleware.__call__", "/opt/tools/src/apiscope/agent/middleware.py", 113)
    hook = Frame("__call__", "/opt/tools/src/apiscope/autostart/sitecustomize.py", 60)
    assert not is_app_frame(agent, ())
    assert not is_app_frame(hook, ())
    assert is_app_frame(Frame("handler", "/srv/shop/apiscope/views.py", 3), ())


def test_a_compiled_templates_frames_are_stood_for_by_the_line_that_rendered_it() -> None:
    # Jinja2 compiles a template to Python whose frames carry the template's file name and the
    # generated code's line numbers: line 41 of a four-line list.html.
    roots = app_roots(ROUTES)
    render = Frame("read_item", APP, 14)
    jinja = "/venv/lib/python3.11/site-packages/jinja2/environment.py"
    stack = [*LOOP, render, Frame("Template.render", jinja, 1295),
             Frame("root", "/srv/shop/shop/templates/list.html", 41),
             Frame("Environment.getattr", jinja, 489)]
    assert user_frame(stack, roots) == render
    assert user_frame([*LOOP, Frame("helper", "/srv/shop/shop/cython_ext.pyx", 3)], roots)


def test_a_launcher_that_started_the_event_loop_is_not_where_the_loop_spends_its_time() -> None:
    # `myapp` console script -> cli.main() -> uvicorn.run(): cli.py is the application's, but
    # what the loop runs below it is the server's and the framework's work, not cli.py:12's.
    roots = app_roots(ROUTES)
    std = "/usr/lib/python3.11/asyncio"
    launcher = [Frame("main", "/srv/shop/shop/cli.py", 12),
                Frame("run", "/venv/lib/python3.11/site-packages/uvicorn/main.py", 579),
                Frame("run", f"{std}/runners.py", 118),
                Frame("run_until_complete", f"{std}/base_events.py", 640),
                Frame("run_forever", f"{std}/base_events.py", 607),
                Frame("_run_once", f"{std}/base_events.py", 1922),
                Frame("Handle._run", f"{std}/events.py", 80)]
    h11 = Frame("run_asgi", "/venv/lib/python3.11/site-packages/uvicorn/protocols/h11.py", 404)
    assert user_frame([*launcher, h11], roots) is None
    assert request_frame([*launcher, h11], None, roots) is None
    handler = Frame("read_item", APP, 14)
    assert user_frame([*launcher, h11, handler], roots) == handler
    # A sync handler running a coroutine to its end on a loop of its own: the handler's work.
    nested = [handler, *launcher[2:], Frame("get", "/venv/lib/python3.11/httpx/_client.py", 9)]
    assert request_frame(nested, 0, roots) == handler
    # A thread handing a result to the loop calls into it without running it.
    handing = [Frame("helper", "/srv/shop/shop/jobs.py", 7),
               Frame("call_soon_threadsafe", f"{std}/base_events.py", 804)]
    assert user_frame(handing, roots) == handing[0]


DESK = "/srv/desk/tickets/views.py"
DRF = "/venv/lib/python3.12/site-packages/rest_framework/mixins.py"
TWINS = [  # a DRF router's routes: each with its format-suffix twin
    RouteInfo("GET", "/api/tickets/", "rest_framework.mixins:ListModelMixin.list", DRF, 38,
              False),
    RouteInfo("GET", "/api/tickets.{format}/?", "rest_framework.mixins:ListModelMixin.list",
              DRF, 38, False),
    RouteInfo("GET", "/api/login/", "tickets.views:login", DESK, 30, False),
    RouteInfo("GET", "/api/stats/", "tickets.views:stats", DESK, 50, True),
]


def test_a_handler_of_several_endpoints_is_charged_to_the_one_that_served_requests() -> None:
    list_stack = [*LOOP, Frame("ListModelMixin.list", DRF, 40)]
    login_stack = [*LOOP, Frame("login", DESK, 33)]
    # Without requests to go by, the template's order decides (the twin sorts first).
    assert RouteMatcher(TWINS).endpoint_of(list_stack) == "GET /api/tickets.{format}/?"
    assert RouteMatcher(TWINS).endpoint_of(login_stack) == "GET /api/login/"
    served = {"GET /api/tickets/", "POST /api/login/"}
    matcher = RouteMatcher(TWINS, served)
    assert matcher.endpoint_of(list_stack) == "GET /api/tickets/"
    # A Django function view answers any method: the requests' method is the endpoint's.
    assert matcher.endpoint_of(login_stack) == "POST /api/login/"
    assert matcher.handler_of("POST /api/login/") == "tickets.views:login"
    # A served endpoint whose template has no single handler in the table is not invented.
    assert RouteMatcher(TWINS, {"PUT /api/nowhere/"}).handler_of("PUT /api/nowhere/") is None


STD_JSON = "/usr/lib/python3.12/json/__init__.py"
MIDDLEWARE = Frame("ServerTimingMiddleware.__call__", "/srv/desk/tickets/middleware.py", 12)
DJANGO = Frame("BaseHandler._get_response", "/venv/lib/python3.12/site-packages/django/core/"
               "handlers/base.py", 197)


def test_middleware_passing_the_request_on_is_not_where_the_time_below_it_goes() -> None:
    matcher = RouteMatcher(TWINS, {"GET /api/tickets/"})
    roots = ("/srv/desk/tickets",)
    in_view = (*LOOP, MIDDLEWARE, DJANGO, Frame("ListModelMixin.list", DRF, 40),
               Frame("dumps", "/usr/lib/python3.12/json/__init__.py", 231))
    after_view = (*LOOP, MIDDLEWARE, DJANGO,
                  Frame("render", "/venv/lib/python3.12/site-packages/rest_framework/"
                        "response.py", 70))
    index = matcher.handler_at(in_view)
    assert index is not None and index[1] == "GET /api/tickets/"
    # Below a library's generic view no application line runs: none is charged, not the
    # middleware above it.
    assert user_frame(in_view, roots) == MIDDLEWARE
    assert request_frame(in_view, index[0], roots) is None
    own_view = (*LOOP, MIDDLEWARE, DJANGO, Frame("stats", DESK, 52))
    stats = matcher.handler_at(own_view)
    assert stats is not None and request_frame(own_view, stats[0], roots) == own_view[-1]
    # The middleware's line is seen above a handler: where no handler runs below it, the
    # framework's work around the handler (rendering the response) runs there.
    lines = dispatch_lines([(in_view, index[0]), (after_view, None)], roots)
    assert lines == {(MIDDLEWARE.file, MIDDLEWARE.line)}
    # A middleware line doing its own work (never above a handler) is not one of them.
    logging_line = (*LOOP, Frame("ServerTimingMiddleware.__call__", MIDDLEWARE.file, 14))
    assert (MIDDLEWARE.file, 14) not in dispatch_lines([(logging_line, None)], roots)


def test_an_apps_wrapper_calling_a_frameworks_entry_hands_the_request_on() -> None:
    # The app's own ASGI callable (lifespan set-up, then the library's FastAPI app): the
    # framework's middleware and routing below it are not its line's cost, though no handler
    # was sampled below it. Its own work (no framework entry below) stays its line's.
    wrapper = Frame("app", "/srv/admin/serve.py", 15)
    entry = Frame("FastAPI.__call__", "/venv/lib/python3.12/site-packages/fastapi/"
                  "applications.py", 1134)
    routing = Frame("Router.__call__", "/venv/lib/python3.12/site-packages/starlette/"
                    "routing.py", 715)
    roots = ("/srv/admin",)
    lines = dispatch_lines([((*LOOP, wrapper, entry, routing), None)], roots)
    assert lines == {(wrapper.file, 15)}
    own_work = Frame("app", wrapper.file, 9)
    assert dispatch_lines([((*LOOP, own_work, Frame("loads", STD_JSON, 346)), None)],
                          roots) == set()


def test_a_handler_serving_several_routes_is_charged_to_none_of_them() -> None:
    # Two viewsets share DRF's inherited `list`: a stack in it cannot say whose list it runs.
    routes = [*TWINS, RouteInfo("GET", "/api/teams/", "rest_framework.mixins:ListModelMixin.list",
                                DRF, 38, False)]
    stack = (*LOOP, Frame("ListModelMixin.list", DRF, 40))
    matcher = RouteMatcher(routes, {"GET /api/tickets/", "GET /api/teams/"})
    assert matcher.handler_at(stack) == (len(LOOP), None)
    assert matcher.endpoint_of(stack) is None
    # Only one of them served requests: that one.
    assert RouteMatcher(routes, {"GET /api/teams/"}).endpoint_of(stack) == "GET /api/teams/"


GENERICS = "/venv/lib/python3.12/site-packages/rest_framework/generics.py"
TRACKER = "/srv/tracker/tracker/api.py"
GENERIC_VIEWS = [
    # A viewset's list, and two ListAPIViews whose `get` calls that same inherited `list`.
    RouteInfo("GET", "/api/projects/", "rest_framework.mixins:ListModelMixin.list", DRF, 38,
              False, "tracker.api:ProjectViewSet", TRACKER, 40),
    RouteInfo("GET", "/api/projects.{format}/?", "rest_framework.mixins:ListModelMixin.list",
              DRF, 38, False, "tracker.api:ProjectViewSet", TRACKER, 40),
    RouteInfo("GET", "/api/issues/", "rest_framework.generics:ListAPIView.get", GENERICS, 200,
              False, "tracker.api:IssueListAPI", TRACKER, 10),
    RouteInfo("GET", "/api/labels/", "rest_framework.generics:ListAPIView.get", GENERICS, 200,
              False, "tracker.api:LabelListAPI", TRACKER, 25),
]
DISPATCH = Frame("APIView.dispatch", "/venv/lib/python3.12/site-packages/rest_framework/"
                 "views.py", 512)


def test_a_generic_view_calling_another_views_handler_is_charged_to_its_own_route() -> None:
    served = {"GET /api/projects/", "GET /api/issues/"}
    matcher = RouteMatcher(GENERIC_VIEWS, served)
    issues = (*LOOP, DISPATCH, Frame("ListAPIView.get", GENERICS, 203),
              Frame("ListModelMixin.list", DRF, 40),
              Frame("IssueListAPI.get_queryset", TRACKER, 12))
    # The outermost library method is what the framework dispatched to, not the viewset's
    # `list` it calls.
    assert matcher.handler_at(issues) == (len(LOOP) + 1, "GET /api/issues/")
    projects = (*LOOP, DISPATCH, Frame("ListModelMixin.list", DRF, 40))
    assert matcher.endpoint_of(projects) == "GET /api/projects/"
    # An app's handler comes first wherever it is: its `get` calling `super().get()`.
    own = [RouteInfo("GET", "/api/mine/", "tracker.api:MineAPI.get", TRACKER, 60, False),
           *GENERIC_VIEWS]
    mine = (*LOOP, DISPATCH, Frame("MineAPI.get", TRACKER, 62),
            Frame("ListAPIView.get", GENERICS, 203), Frame("ListModelMixin.list", DRF, 40))
    assert RouteMatcher(own, served).handler_at(mine) == (len(LOOP) + 1, "GET /api/mine/")


def test_the_app_view_class_below_a_shared_library_method_names_the_route() -> None:
    served = {"GET /api/issues/", "GET /api/labels/", "GET /api/projects/"}
    matcher = RouteMatcher(GENERIC_VIEWS, served)
    below = (*LOOP, DISPATCH, Frame("ListAPIView.get", GENERICS, 203),
             Frame("ListModelMixin.list", DRF, 40))
    assert matcher.endpoint_of((*below, Frame("LabelListAPI.get_queryset", TRACKER, 27))) \
        == "GET /api/labels/"
    assert matcher.endpoint_of((*below, Frame("IssueListAPI.get_queryset", TRACKER, 12))) \
        == "GET /api/issues/"
    # Serializing, with no method of the app's class running: either of them, so neither.
    assert matcher.handler_at((*below, Frame("to_representation", DRF, 90))) \
        == (len(LOOP) + 1, None)
    # A viewset's own class, its format-suffix twin idle: the route that served requests.
    viewsets = [*GENERIC_VIEWS, RouteInfo(
        "GET", "/api/teams/", "rest_framework.mixins:ListModelMixin.list", DRF, 38, False,
        "tracker.api:TeamViewSet", TRACKER, 80)]
    matcher = RouteMatcher(viewsets, served | {"GET /api/teams/"})
    listing = (*LOOP, DISPATCH, Frame("ListModelMixin.list", DRF, 40))
    assert matcher.endpoint_of((*listing, Frame("ProjectViewSet.get_queryset", TRACKER, 44))) \
        == "GET /api/projects/"
    assert matcher.endpoint_of(listing) is None


def test_the_call_an_app_line_makes_is_named_past_the_agents_own_wrappers() -> None:
    # The agent counts a driver's connects by wrapping `connect`: its wrapper's frame lies
    # between the app's line and the driver's, and the line still calls the driver.
    line = Frame("audit_trail", "/srv/shop/shop/legacy.py", 67)
    wrapper = Frame("QueryHooks._wrap_connect.<locals>.make.<locals>.opened",
                    "/opt/apiscope/src/apiscope/agent/queries.py", 347)
    driver = Frame("Connection.connect", "/srv/venv/lib/python3.12/site-packages/psycopg/"
                   "connection.py", 119)
    assert library_call((line, wrapper, driver), line) == "Connection.connect"
    assert library_call((line, driver), line) == "Connection.connect"
    assert library_call((line, wrapper), line) is None
    assert library_call((line,), line) is None
