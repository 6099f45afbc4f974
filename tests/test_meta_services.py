"""Each service file reads every known shape of its messages: old and new bodies, new services.

Bodies are written from the services' own schemas, publishing code and documentation
(old FAS objects vs names vs noggin's nested ``msg``, bodhi 1 titles vs bodhi 2+ aliases,
pkgdb 1 nested ACLs vs pkgdb 2, koji names vs objects, CI's 2019+ schema …); each case
states the sentence, link, people and packages a reader expects.
"""

from __future__ import annotations

from typing import Any

import pytest
from fedmsg_notify.bus.envelope import Message, build_envelope
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.meta.quality import sentence_problem, valid_link


def make(topic: str, body: Any) -> Message:
    return Message.from_envelope(build_envelope(topic, body, i=1, username="tester"))


@pytest.fixture(scope="module")
def engine() -> MetaEngine:
    return MetaEngine()


CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        'fas 1 objects',
        'org.fedoraproject.prod.fas.user.create',
        {"agent": {"username": "kevin"}, "user": {"username": "ralph"}},
        {'subtitle': 'new FAS account: ralph', 'link': 'https://admin.fedoraproject.org/accounts/user/view/ralph', 'usernames': ('kevin', 'ralph'), 'packages': ()},
    ),
    (
        'fas 1 names',
        'org.fedoraproject.prod.fas.user.create',
        {"agent": "kevin", "user": "ralph"},
        {'subtitle': 'new FAS account: ralph', 'link': 'https://admin.fedoraproject.org/accounts/user/view/ralph', 'usernames': ('kevin', 'ralph'), 'packages': ()},
    ),
    (
        'noggin',
        'org.fedoraproject.prod.fas.user.create',
        {"msg": {"agent": "ralph", "user": "ralph"}},
        {'subtitle': 'new FAS account: ralph', 'link': 'https://accounts.fedoraproject.org/user/ralph/', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'fas 1 objects group',
        'org.fedoraproject.prod.fas.group.member.sponsor',
        {"agent": {"username": "kevin"}, "user": {"username": "ralph"}, "group": {"name": "sysadmin"}},
        {'subtitle': 'kevin sponsored ralph into the FAS group sysadmin', 'link': 'https://admin.fedoraproject.org/accounts/group/view/sysadmin', 'usernames': ('kevin', 'ralph'), 'packages': ()},
    ),
    (
        'noggin group',
        'org.fedoraproject.prod.fas.group.member.sponsor',
        {"msg": {"agent": "kevin", "user": "ralph", "group": "sysadmin"}},
        {'subtitle': 'kevin sponsored ralph into the FAS group sysadmin', 'link': 'https://accounts.fedoraproject.org/group/sysadmin/', 'usernames': ('kevin', 'ralph'), 'packages': ()},
    ),
    (
        'bodhi 1 request',
        'org.fedoraproject.prod.bodhi.update.request.testing',
        {"agent": "ralph", "update": {"title": "fedmsg-0.2.7-2.el6", "submitter": "ralph", "builds": [{"nvr": "fedmsg-0.2.7-2.el6", "package": {"name": "fedmsg"}}]}},
        {'subtitle': 'ralph submitted fedmsg-0.2.7-2.el6 to testing', 'link': 'https://bodhi.fedoraproject.org/updates/fedmsg-0.2.7-2.el6', 'usernames': ('ralph',), 'packages': ('fedmsg',)},
    ),
    (
        'bodhi 2 request',
        'org.fedoraproject.prod.bodhi.update.request.testing',
        {"agent": "ralph", "update": {"alias": "FEDORA-EPEL-2016-1", "title": "fedmsg-0.2.7-2.el6", "user": {"name": "ralph"}, "builds": [{"nvr": "fedmsg-0.2.7-2.el6"}]}},
        {'subtitle': 'ralph submitted FEDORA-EPEL-2016-1 to testing', 'link': 'https://bodhi.fedoraproject.org/updates/FEDORA-EPEL-2016-1', 'usernames': ('ralph',), 'packages': ('fedmsg',)},
    ),
    (
        'bodhi 1 complete',
        'org.fedoraproject.prod.bodhi.update.complete.testing',
        {"agent": "bodhi", "update": {"title": "fedmsg-0.2.7-2.el6 python-moksha-1.0-1.el6", "submitter": {"name": "ralph"}}},
        {'subtitle': 'bodhi finished pushing fedmsg-0.2.7-2.el6 python-moksha-1.0-1.el6 to testing for ralph', 'link': 'https://bodhi.fedoraproject.org/updates/fedmsg-0.2.7-2.el6%20python-moksha-1.0-1.el6', 'usernames': ('bodhi', 'ralph'), 'packages': ('fedmsg', 'python-moksha')},
    ),
    (
        'bodhi 1 comment',
        'org.fedoraproject.prod.bodhi.update.comment',
        {"comment": {"author": "adamw", "text": "works", "karma": 1, "update_title": "gnome-shell-3.6.1-1.fc18"}},
        {'subtitle': 'adamw commented on bodhi update gnome-shell-3.6.1-1.fc18 (karma: 1)', 'link': 'https://bodhi.fedoraproject.org/updates/gnome-shell-3.6.1-1.fc18', 'usernames': ('adamw',), 'packages': ('gnome-shell',)},
    ),
    (
        'bodhi 2 comment',
        'org.fedoraproject.prod.bodhi.update.comment',
        {"agent": "adamw", "comment": {"user": {"name": "adamw"}, "karma": 1, "update": {"alias": "FEDORA-2019-1", "title": "gnome-shell-3.6.1-1.fc18", "user": {"name": "ralph"}}}},
        {'subtitle': 'adamw commented on bodhi update FEDORA-2019-1 (karma: 1)', 'link': 'https://bodhi.fedoraproject.org/updates/FEDORA-2019-1', 'usernames': ('adamw', 'ralph'), 'packages': ('gnome-shell',)},
    ),
    (
        'bodhi 1 override',
        'org.fedoraproject.prod.bodhi.buildroot_override.tag',
        {"override": {"build": "glibc-2.26-1.fc27", "submitter": "ralph"}},
        {'subtitle': 'ralph submitted a buildroot override for glibc-2.26-1.fc27', 'link': 'https://bodhi.fedoraproject.org/overrides/glibc-2.26-1.fc27', 'usernames': ('ralph',), 'packages': ('glibc',)},
    ),
    (
        'bodhi 2 override',
        'org.fedoraproject.prod.bodhi.buildroot_override.tag',
        {"agent": "ralph", "override": {"build": {"nvr": "glibc-2.26-1.fc27"}, "submitter": {"name": "ralph"}}},
        {'subtitle': 'ralph submitted a buildroot override for glibc-2.26-1.fc27', 'link': 'https://bodhi.fedoraproject.org/overrides/glibc-2.26-1.fc27', 'usernames': ('ralph',), 'packages': ('glibc',)},
    ),
    (
        'pkgdb 1 acl',
        'org.fedoraproject.prod.pkgdb.acl.update',
        {"agent": "kevin", "acl": {"acl": "commit", "fas_name": "ralph", "status": "Approved", "packagelist": {"package": {"name": "guake"}, "collection": {"branchname": "f20"}}}},
        {'subtitle': "kevin set ralph's commit on guake (f20) to Approved", 'link': 'https://admin.fedoraproject.org/pkgdb/package/rpms/guake/', 'usernames': ('kevin', 'ralph'), 'packages': ('guake',)},
    ),
    (
        'pkgdb 2 acl',
        'org.fedoraproject.prod.pkgdb.acl.update',
        {"agent": "kevin", "username": "ralph", "acl": "commit", "status": "Approved", "package_name": "guake", "package_listing": {"package": {"name": "guake", "namespace": "rpms"}, "collection": {"branchname": "f20"}, "point_of_contact": "pingou"}},
        {'subtitle': "kevin set ralph's commit on guake (f20) to Approved", 'link': 'https://admin.fedoraproject.org/pkgdb/package/rpms/guake/', 'usernames': ('kevin', 'ralph'), 'packages': ('guake',)},
    ),
    (
        'pkgdb 1 owner',
        'org.fedoraproject.prod.pkgdb.owner.update',
        {"agent": "kevin", "package_listing": {"package": {"name": "guake"}, "collection": {"branchname": "master"}, "owner": "ralph"}},
        {'subtitle': 'kevin changed the owner of guake (master) to ralph', 'link': 'https://admin.fedoraproject.org/pkgdb/package/rpms/guake/', 'usernames': ('kevin', 'ralph'), 'packages': ('guake',)},
    ),
    (
        'pkgdb 2 owner',
        'org.fedoraproject.prod.pkgdb.owner.update',
        {"agent": "kevin", "username": "ralph", "package_listing": {"package": {"name": "guake"}, "collection": {"branchname": "master"}, "point_of_contact": "ralph"}},
        {'subtitle': 'kevin changed the owner of guake (master) to ralph', 'link': 'https://admin.fedoraproject.org/pkgdb/package/rpms/guake/', 'usernames': ('kevin', 'ralph'), 'packages': ('guake',)},
    ),
    (
        'koji names',
        'org.fedoraproject.prod.buildsys.build.state.change',
        {"build_id": 9, "name": "kernel", "version": "5.0", "release": "1.fc30", "instance": "primary", "owner": "jforbes", "new": 1, "old": 0},
        {'subtitle': "jforbes's kernel-5.0-1.fc30 build completed", 'link': 'http://koji.fedoraproject.org/koji/buildinfo?buildID=9', 'usernames': ('jforbes',), 'packages': ('kernel',)},
    ),
    (
        'koji objects',
        'org.fedoraproject.prod.buildsys.build.state.change',
        {"build_id": 9, "name": "kernel", "version": "5.0", "release": "1.fc30", "instance": "primary", "owner": {"name": "jforbes", "id": 3}, "new": 1, "old": 0},
        {'subtitle': "jforbes's kernel-5.0-1.fc30 build completed", 'link': 'http://koji.fedoraproject.org/koji/buildinfo?buildID=9', 'usernames': ('jforbes',), 'packages': ('kernel',)},
    ),
    (
        'koji stg',
        'org.fedoraproject.stg.buildsys.build.state.change',
        {"build_id": 9, "name": "kernel", "version": "5.0", "release": "1.fc30", "instance": "primary", "owner": "jforbes", "new": 1, "old": 0},
        {'subtitle': "jforbes's kernel-5.0-1.fc30 build completed", 'link': 'http://koji.stg.fedoraproject.org/koji/buildinfo?buildID=9', 'usernames': ('jforbes',), 'packages': ('kernel',)},
    ),
    (
        'koji tag object user',
        'org.fedoraproject.prod.buildsys.tag',
        {"build_id": 7, "name": "python-foo", "version": "1.0", "release": "1.fc30", "tag": "f30-updates", "tag_id": 2, "instance": "primary", "user": {"name": "bodhi"}, "owner": "ralph"},
        {'subtitle': 'bodhi tagged python-foo-1.0-1.fc30 into f30-updates', 'link': 'http://koji.fedoraproject.org/koji/buildinfo?buildID=7', 'usernames': ('bodhi', 'ralph'), 'packages': ('python-foo',)},
    ),
    (
        'ask stg',
        'org.fedoraproject.stg.askbot.post.edit',
        {"agent": "ralph", "created": True, "instance": {"post_type": "question"}, "thread": {"title": "How?"}, "topmost_post_id": 3},
        {'subtitle': 'ralph asked "How?"', 'link': 'https://ask.stg.fedoraproject.org/question/3/', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'src stg',
        'org.fedoraproject.stg.git.receive',
        {"commit": {"repo": "guake", "branch": "master", "rev": "abc", "summary": "Fix it", "username": "ralph", "namespace": "rpms"}},
        {'subtitle': 'ralph pushed to rpms/guake (master): Fix it', 'link': 'https://src.stg.fedoraproject.org/rpms/guake/c/abc?branch=master', 'usernames': ('ralph',), 'packages': ('guake',)},
    ),
    (
        'ansible',
        'org.fedoraproject.prod.ansible.playbook.start',
        {"playbook": "/srv/web/infra/ansible/playbooks/groups/proxies.yml", "userid": "ralph", "extra_vars": {}, "inventory": "/srv/web/infra/ansible/inventory"},
        {'subtitle': 'ralph started an ansible run of groups/proxies', 'link': 'https://infrastructure.fedoraproject.org/cgit/ansible.git/tree/playbooks/groups/proxies.yml', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'ansible',
        'org.fedoraproject.prod.ansible.playbook.complete',
        {"playbook": "/srv/web/infra/ansible/playbooks/groups/proxies.yml", "userid": "ralph", "results": {"proxy01": {"ok": 3}}},
        {'subtitle': "ralph's ansible run of groups/proxies completed", 'link': 'https://infrastructure.fedoraproject.org/cgit/ansible.git/tree/playbooks/groups/proxies.yml', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'greenwave',
        'org.fedoraproject.prod.greenwave.decision.update',
        {"decision_context": "bodhi_update_push_stable", "product_version": "fedora-30", "policies_satisfied": False, "summary": "1 of 2 required tests failed", "subject_type": "koji_build", "subject_identifier": "python-foo-1.0-1.fc30", "subject": [{"item": "python-foo-1.0-1.fc30", "type": "koji_build"}]},
        {'subtitle': 'greenwave says python-foo-1.0-1.fc30 fails bodhi_update_push_stable for fedora-30: 1 of 2 required tests failed', 'link': None, 'usernames': (), 'packages': ('python-foo',)},
    ),
    (
        'greenwave',
        'org.fedoraproject.prod.greenwave.decision.update',
        {"decision_context": "bodhi_update_push_testing", "policies_satisfied": True, "summary": "all required tests passed", "subject": [{"original_spec_nvr": "glibc-2.26-1.fc27"}]},
        {'subtitle': 'greenwave says glibc-2.26-1.fc27 passes bodhi_update_push_testing: all required tests passed', 'link': None, 'usernames': (), 'packages': ('glibc',)},
    ),
    (
        'infragit',
        'org.fedoraproject.prod.infragit.receive',
        {"commit": {"repo": "ansible", "branch": "master", "rev": "abc123", "summary": "Fix the proxies", "username": "kevin", "name": "Kevin Fenzi", "email": "kevin@scrye.com"}},
        {'subtitle': 'kevin pushed to ansible (master): Fix the proxies', 'link': 'https://infrastructure.fedoraproject.org/cgit/ansible.git/commit/?h=master&id=abc123', 'usernames': ('kevin',), 'packages': ()},
    ),
    (
        'irc',
        'org.fedoraproject.prod.irc.karma',
        {"agent": "ralph", "recipient": "kevin", "total": 12, "vote": 1, "channel": "#fedora-admin", "line": "kevin++"},
        {'subtitle': 'ralph gave kevin a cookie in #fedora-admin (now 12)', 'link': None, 'usernames': ('kevin', 'ralph'), 'packages': ()},
    ),
    (
        'kerneltest',
        'org.fedoraproject.prod.kerneltest.upload.new',
        {"agent": "jforbes", "test": {"testid": 1234, "kver": "3.17.4-301.fc21.x86_64", "fver": 21, "arch": "x86_64", "result": "PASS", "tester": "jforbes", "testset": "default"}},
        {'subtitle': 'jforbes uploaded default kernel test results for 3.17.4-301.fc21.x86_64: PASS', 'link': 'https://apps.fedoraproject.org/kerneltest/logs/1234', 'usernames': ('jforbes',), 'packages': ('kernel',)},
    ),
    (
        'kerneltest',
        'org.fedoraproject.prod.kerneltest.release.new',
        {"agent": "jwboyer", "release": {"releasenum": 21, "support": "RELEASE"}},
        {'subtitle': 'jwboyer added kernel test release Fedora 21 (release)', 'link': 'https://apps.fedoraproject.org/kerneltest/release/21', 'usernames': ('jwboyer',), 'packages': ()},
    ),
    (
        'mbs',
        'org.fedoraproject.prod.mbs.module.state.change',
        {"id": 1109, "name": "testmodule", "stream": "master", "version": "20170816080815", "state": 5, "state_name": "ready", "owner": "ralph"},
        {'subtitle': "ralph's module build of testmodule:master:20170816080815 (#1109) is now ready", 'link': 'https://mbs.fedoraproject.org/module-build-service/1/module-builds/1109', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'mbs',
        'org.fedoraproject.stg.mbs.component.state.change',
        {"module_build_id": 1109, "package": "perl-Tangerine", "nvr": "perl-Tangerine-0.23-1.module_1109", "state": 1, "task_id": 42},
        {'subtitle': 'component perl-Tangerine-0.23-1.module_1109 of module build 1109 is now complete', 'link': 'https://mbs.stg.fedoraproject.org/module-build-service/1/module-builds/1109', 'usernames': (), 'packages': ('perl-Tangerine',)},
    ),
    (
        'mdapi',
        'org.fedoraproject.prod.mdapi.repo.update',
        {"name": "f30-updates", "packages": ["python-requests", "guake"], "url": "https://download.fedoraproject.org/pub/fedora/linux/updates/30/x86_64/repodata/x-primary.sqlite.xz"},
        {'subtitle': 'mdapi noticed a f30-updates repository change: python-requests and guake', 'link': 'https://download.fedoraproject.org/pub/fedora/linux/updates/30/x86_64/repodata/x-primary.sqlite.xz', 'usernames': (), 'packages': ('guake', 'python-requests')},
    ),
    (
        'mdapi',
        'org.fedoraproject.prod.mdapi.repo.update',
        {"name": "rawhide", "url": "/pub/fedora/linux/development/rawhide/x86_64/os/repodata/", "differences": {"packages": {"added": [["foo", "1.0"]], "removed": []}}},
        {'subtitle': 'mdapi noticed a rawhide repository change', 'link': 'https://apps.fedoraproject.org/mdapi', 'usernames': (), 'packages': ()},
    ),
    (
        'odcs',
        'org.fedoraproject.prod.odcs.compose.state-changed',
        {"event": "state-changed", "compose": {"id": 42, "owner": "ralph", "source": "f30-build", "source_type": 1, "state_name": "done", "packages": "python-foo python-bar"}},
        {'subtitle': "ralph's ODCS compose #42 of f30-build is now done", 'link': 'https://odcs.fedoraproject.org/api/1/composes/42', 'usernames': ('ralph',), 'packages': ('python-bar', 'python-foo')},
    ),
    (
        'planet',
        'org.fedoraproject.prod.planet.post.new',
        {"username": "ralph", "name": "Ralph Bean", "post": {"title": "fedmsg is ten", "link": "http://threebean.org/blog/fedmsg-ten"}},
        {'subtitle': 'ralph wrote a new blog post: fedmsg is ten', 'link': 'http://threebean.org/blog/fedmsg-ten', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'summershum',
        'org.fedoraproject.prod.summershum.ingest.complete',
        {"original": {"package": "python-foo", "filename": "foo-1.0.tar.gz", "md5sum": "0123abcd", "tarball": "foo-1.0.tar.gz"}},
        {'subtitle': 'summershum finished indexing foo-1.0.tar.gz of python-foo', 'link': 'https://src.fedoraproject.org/lookaside/pkgs/python-foo/foo-1.0.tar.gz/md5/0123abcd/foo-1.0.tar.gz', 'usernames': (), 'packages': ('python-foo',)},
    ),
    (
        'zanata',
        'org.fedoraproject.prod.zanata.document.state.changed',
        {"project": "anaconda", "version": "master", "docId": "po/anaconda", "locale": "fr", "milestone": "100% Translated", "zanataServer": "https://fedora.zanata.org/"},
        {'subtitle': 'zanata: fr translation of anaconda master (po/anaconda) reached 100% Translated', 'link': 'https://fedora.zanata.org/iteration/view/anaconda/master', 'usernames': (), 'packages': ()},
    ),
    (
        'fedora_elections',
        'org.fedoraproject.prod.fedora_elections.election.new',
        {"agent": "ralph", "election": {"alias": "F30-FESCo", "shortdesc": "FESCo elections"}},
        {'subtitle': 'ralph created election F30-FESCo', 'link': 'https://admin.fedoraproject.org/voting/about/F30-FESCo', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'ci ci.koji-build.test.complete',
        'org.centos.prod.ci.koji-build.test.complete',
        {"artifact": {"type": "koji-build", "id": 35000000, "issuer": "ralph", "component": "python-foo", "nvr": "python-foo-1.0-1.fc30", "scratch": False}, "run": {"url": "https://jenkins.example.org/job/1/", "log": "https://jenkins.example.org/job/1/console"}, "test": {"namespace": "fedora-ci.koji-build", "type": "tier0", "category": "functional", "result": "passed"}, "pipeline": {"id": "x", "name": "tier0"}},
        {'subtitle': 'CI fedora-ci.koji-build.tier0 of python-foo-1.0-1.fc30 passed', 'link': 'https://jenkins.example.org/job/1/', 'usernames': ('ralph',), 'packages': ('python-foo',)},
    ),
    (
        'ci ci.dist-git-pr.test.queued',
        'org.centos.prod.ci.dist-git-pr.test.queued',
        {"artifact": {"type": "pull-request", "id": "abc", "issuer": "pingou", "repository": "https://src.fedoraproject.org/rpms/guake", "uid": "12"}, "run": {"url": "https://jenkins.example.org/job/2/"}, "test": {"type": "tier0"}},
        {'subtitle': 'CI tier0 of rpms/guake PR #12 queued', 'link': 'https://jenkins.example.org/job/2/', 'usernames': ('pingou',), 'packages': ('guake',)},
    ),
    (
        'ci ci.pipeline.allpackages-pr.complete',
        'org.centos.prod.ci.pipeline.allpackages-pr.complete',
        {"branch": "master", "build_url": "https://jenkins.example.org/x/", "namespace": "rpms", "repo": "python38", "rev": "PR-3", "status": "SUCCESS", "username": None},
        {'subtitle': 'CI allpackages-pr pipeline: rpms/python38 PR-3 (master) complete: success', 'link': 'https://jenkins.example.org/x/', 'usernames': (), 'packages': ()},
    ),
    (
        'ci ci.pipeline.allpackages-build.package.ignored',
        'org.centos.prod.ci.pipeline.allpackages-build.package.ignored',
        {"branch": "master", "build_url": "https://jenkins.example.org/y/", "namespace": None, "repo": "pytest", "rev": "kojitask-1", "status": "SUCCESS", "username": "jankratochvil"},
        {'subtitle': 'CI allpackages-build pipeline: rpms/pytest (master) package ignored (requested by jankratochvil)', 'link': 'https://jenkins.example.org/y/', 'usernames': ('jankratochvil',), 'packages': ()},
    ),
    (
        'fedoracollege content',
        'fedoracollege.content.added',
        {"title": "Packaging 101", "link": "http://college.example.org/packaging-101", "type_content": "lecture", "user_id": "hammad"},
        {'subtitle': 'hammad added the lecture "Packaging 101" to Fedora College', 'link': 'http://college.example.org/packaging-101', 'usernames': ('hammad',), 'packages': ()},
    ),
    (
        'tagger object package',
        'org.fedoraproject.prod.fedoratagger.tag.create',
        {"tag": {"tag": "roguelike", "package": {"name": "nethack", "icon": "https://apps.fedoraproject.org/packages/images/icons/nethack.png"}}, "user": {"username": "ralph"}},
        {'subtitle': 'ralph added the tag "roguelike" to nethack', 'link': 'https://apps.fedoraproject.org/tagger/nethack', 'usernames': ('ralph',), 'packages': ('nethack',)},
    ),
    (
        'tagger name package',
        'org.fedoraproject.prod.fedoratagger.tag.create',
        {"tag": {"tag": "roguelike", "package": "nethack"}, "user": {"username": "ralph"}},
        {'subtitle': 'ralph added the tag "roguelike" to nethack', 'link': 'https://apps.fedoraproject.org/tagger/nethack', 'usernames': ('ralph',), 'packages': ('nethack',)},
    ),
    (
        'openqa job done',
        'org.fedoraproject.prod.openqa.job.done',
        {"id": 71262, "TEST": "install_default", "FLAVOR": "Server-dvd-iso", "ARCH": "x86_64", "BUILD": "Fedora-Rawhide-20170207.n.0", "result": "passed"},
        {'subtitle': 'openQA job install_default #71262 (Server-dvd-iso, x86_64) for Fedora-Rawhide-20170207.n.0 finished: passed', 'link': 'https://openqa.fedoraproject.org/tests/71262', 'usernames': (), 'packages': ()},
    ),
    (
        'openqa restart',
        'org.fedoraproject.prod.openqa.job.restart',
        {"id": 71262, "result": {"71262": 71300}, "auto": 0},
        {'subtitle': 'openQA job #71262 restarted', 'link': 'https://openqa.fedoraproject.org/tests/71262', 'usernames': (), 'packages': ()},
    ),
    (
        'openqa comment',
        'org.fedoraproject.prod.openqa.comment.create',
        {"id": 5, "job_id": 71262, "user": "adamwill", "text": "known bug"},
        {'subtitle': 'adamwill commented on openQA job #71262', 'link': 'https://openqa.fedoraproject.org/tests/71262', 'usernames': ('adamwill',), 'packages': ()},
    ),
    (
        'autocloud compose without id',
        'org.fedoraproject.prod.autocloud.compose.queued',
        {"compose_job_id": 37, "status": "queued"},
        {'subtitle': 'autocloud tests of a compose queued', 'link': 'https://apps.fedoraproject.org/autocloud/jobs/37', 'usernames': (), 'packages': ()},
    ),
    (
        'pagure 3 push',
        'io.pagure.prod.pagure.git.receive',
        {"agent": "pingou", "repo": {"name": "pagure", "fullname": "pagure", "url_path": "pagure"}, "branch": "refs/heads/master", "start_commit": "a1", "end_commit": "b2", "total_commits": 3, "authors": [{"name": "pingou", "fullname": "Pierre-Yves Chibon"}, {"name": "ralph"}], "forced": False},
        {'subtitle': 'pingou pushed 3 commits to pagure (master)', 'link': 'https://pagure.io/pagure/c/b2', 'usernames': ('pingou', 'ralph'), 'packages': ()},
    ),
    (
        'pagure branch',
        'io.pagure.prod.pagure.git.branch.creation',
        {"agent": "pingou", "repo": {"name": "pagure", "fullname": "pagure", "url_path": "pagure"}, "branch": "feature", "rev": "b2"},
        {'subtitle': 'pingou created the branch feature of pagure', 'link': 'https://pagure.io/pagure/tree/feature', 'usernames': ('pingou',), 'packages': ()},
    ),
    (
        'pagure fork',
        'io.pagure.prod.pagure.project.forked',
        {"agent": "ralph", "project": {"name": "pagure", "fullname": "forks/ralph/pagure", "url_path": "fork/ralph/pagure", "parent": {"name": "pagure", "fullname": "pagure"}}},
        {'subtitle': 'ralph forked pagure to forks/ralph/pagure', 'link': 'https://pagure.io/fork/ralph/pagure', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'resultsdb 2',
        'org.fedoraproject.prod.resultsdb.result.new',
        {"task": {"item": "python-foo-1.0-1.fc26", "type": "koji_build", "name": "dist.rpmdeplint"}, "result": {"id": 123, "outcome": "PASSED", "ref_url": "https://taskotron.fedoraproject.org/artifacts/all/x/"}},
        {'subtitle': 'resultsdb: dist.rpmdeplint passed for python-foo-1.0-1.fc26', 'link': 'https://taskotron.fedoraproject.org/artifacts/all/x/', 'usernames': (), 'packages': ('python-foo',)},
    ),
    (
        'resultsdb 1',
        'org.fedoraproject.prod.resultsdb.result.new',
        {"result": {"id": 123, "outcome": "FAILED", "testcase": {"name": "dist.rpmlint", "ref_url": "https://x.example.org/"}, "data": {"item": ["python-foo-1.0-1.fc26"], "type": ["koji_build"]}, "ref_url": "https://taskotron.fedoraproject.org/artifacts/all/y/"}},
        {'subtitle': 'resultsdb: dist.rpmlint failed for python-foo-1.0-1.fc26', 'link': 'https://taskotron.fedoraproject.org/artifacts/all/y/', 'usernames': (), 'packages': ('python-foo',)},
    ),
    (
        'announce',
        'org.fedoraproject.prod.announce.announcement',
        {"agent": "ralph", "message": "Datagrepper will be down for maintenance", "link": "https://status.fedoraproject.org/"},
        {'subtitle': 'ralph announced: Datagrepper will be down for maintenance', 'link': 'https://status.fedoraproject.org/', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'dist-git pagure pr',
        'org.fedoraproject.prod.pagure.pull-request.new',
        {"agent": "ralph", "pullrequest": {"id": 4, "title": "Update to 1.1", "project": {"name": "guake", "namespace": "rpms", "fullname": "rpms/guake", "url_path": "rpms/guake"}, "user": {"name": "ralph"}}},
        {'subtitle': 'ralph opened pull request #4 on rpms/guake: Update to 1.1', 'link': 'https://src.fedoraproject.org/rpms/guake/pull-request/4', 'usernames': ('ralph',), 'packages': ('guake',)},
    ),
    (
        'bugzilla 2019 objects',
        'org.fedoraproject.prod.bugzilla.bug.update',
        {"bug": {"id": 1700000, "summary": "guake crashes", "component": {"name": "guake", "id": 5}, "product": {"name": "Fedora"}, "assigned_to": {"login": "pingou@fedoraproject.org"}}, "event": {"user": {"login": "ralph@fedoraproject.org", "real_name": "Ralph Bean"}, "action": "modify"}},
        {'subtitle': 'Ralph Bean updated RHBZ#1700000 (guake): guake crashes', 'link': 'https://bugzilla.redhat.com/show_bug.cgi?id=1700000', 'usernames': ('ralph',), 'packages': ('guake',)},
    ),
    (
        'bugzilla strings',
        'org.fedoraproject.prod.bugzilla.bug.new',
        {"bug": {"id": 1100000, "summary": "guake crashes", "component": "guake", "product": "Fedora", "weburl": "https://bugzilla.redhat.com/show_bug.cgi?id=1100000"}, "event": {"who": "ralph@fedoraproject.org"}},
        {'subtitle': 'ralph filed RHBZ#1100000 (guake): guake crashes', 'link': 'https://bugzilla.redhat.com/show_bug.cgi?id=1100000', 'usernames': ('ralph',), 'packages': ('guake',)},
    ),
    (
        'pkgdb acl delete',
        'org.fedoraproject.prod.pkgdb.acl.delete',
        {"agent": "kevin", "acl": {"acl": "watchbugzilla", "fas_name": "ralph", "status": "Approved", "packagelist": {"package": {"name": "guake"}, "collection": {"branchname": "f21"}}}},
        {'subtitle': "kevin deleted ralph's watchbugzilla ACL on guake (f21)", 'link': 'https://admin.fedoraproject.org/pkgdb/package/rpms/guake/', 'usernames': ('kevin', 'ralph'), 'packages': ('guake',)},
    ),
    (
        'pkgdb critpath',
        'org.fedoraproject.prod.pkgdb.package.critpath.update',
        {"agent": "kevin", "package_name": "kernel", "critpath": True, "branches": ["f21", "master"]},
        {'subtitle': 'kevin marked kernel as critical path on f21 and master', 'link': 'https://admin.fedoraproject.org/pkgdb/package/rpms/kernel/', 'usernames': ('kevin',), 'packages': ('kernel',)},
    ),
    (
        'pkgdb collection',
        'org.fedoraproject.prod.pkgdb.collection.new',
        {"agent": "kevin", "collection": {"name": "Fedora", "version": "22", "branchname": "f22"}},
        {'subtitle': 'kevin created the collection Fedora 22', 'link': 'https://admin.fedoraproject.org/pkgdb/collection/f22/', 'usernames': ('kevin',), 'packages': ()},
    ),
    (
        'pkgdb koschei',
        'org.fedoraproject.prod.pkgdb.package.koschei.update',
        {"agent": "ralph", "package": {"name": "guake"}, "status": True},
        {'subtitle': 'ralph enabled koschei monitoring of guake', 'link': 'https://admin.fedoraproject.org/pkgdb/package/rpms/guake/', 'usernames': ('ralph',), 'packages': ('guake',)},
    ),
    (
        'copr worker',
        'org.fedoraproject.prod.copr.worker.create',
        {"worker": "worker-1", "what": "creating worker", "owner": "ralph", "copr": "x", "build": 1},
        {'subtitle': 'copr started worker worker-1 for build 1 in ralph/x', 'link': 'https://copr.fedoraproject.org/coprs/ralph/x/build/1/', 'usernames': (), 'packages': ()},
    ),
    (
        'bodhi 2 stack',
        'org.fedoraproject.prod.bodhi.stack.save',
        {"agent": "ralph", "stack": {"name": "hacking", "packages": [{"name": "python-fedmsg"}, {"name": "python-moksha-hub"}]}},
        {'subtitle': 'ralph saved the bodhi stack hacking', 'link': 'https://bodhi.fedoraproject.org/stacks/hacking', 'usernames': ('ralph',), 'packages': ('python-fedmsg', 'python-moksha-hub')},
    ),
    (
        'anitya add tried',
        'org.release-monitoring.prod.anitya.project.add.tried',
        {"distro": None, "message": {"agent": "http://ralph.id.fedoraproject.org/", "project": "arrow"}, "project": None},
        {'subtitle': 'ralph tried to add the project arrow to anitya', 'link': 'https://release-monitoring.org/', 'usernames': ('ralph',), 'packages': ()},
    ),
    (
        'anitya version remove',
        'org.release-monitoring.prod.anitya.project.version.remove',
        {"message": {"agent": "pingou", "project": "arrow", "version": "0.5.1"}, "project": {"id": 5314, "name": "arrow"}},
        {'subtitle': 'pingou removed version 0.5.1 of arrow from anitya', 'link': 'https://release-monitoring.org/project/5314/', 'usernames': ('pingou',), 'packages': ()},
    ),
    (
        'git mass branch',
        'org.fedoraproject.prod.git.mass_branch.start',
        {"agent": "releng", "branch": "f22"},
        {'subtitle': 'releng started the mass branching of f22', 'link': None, 'usernames': ('releng',), 'packages': ()},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "topic", "body", "expected"), CASES, ids=[case[0] for case in CASES])
def test_each_known_shape_reads_well(
    engine: MetaEngine, name: str, topic: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Old and new shapes of a service's message give the same kind of sentence, link, people and packages."""
    meta = engine.compute(make(topic, body)).as_dict()
    assert {key: meta[key] for key in expected} == expected
    assert meta["source"] == "service"


def test_no_case_falls_back(engine: MetaEngine) -> None:
    """Every shape above is understood by its service file's own expressions, not rescued by a fallback."""
    fresh = MetaEngine()
    for _name, topic, body, _expected in CASES:
        fresh.compute(make(topic, body))
    assert fresh.fallback_counts() == {}


@pytest.mark.parametrize(
    ("topic", "body"),
    [
        ("org.fedoraproject.prod.fas.user.create", {"agent": {"username": "ralph"}, "user": {"id": 1}}),
        ("org.fedoraproject.prod.bodhi.update.complete.testing", {"update": {"title": "fedmsg-0.2.7-2.el6", "submitter": {"name": "ralph"}}}),
        ("org.fedoraproject.prod.openqa.job.create", {"id": None, "ARCH": "", "FLAVOR": [], "BUILD": {}}),
        ("org.fedoraproject.prod.autocloud.compose.queued", {"id": {}, "compose_id": None}),
        ("org.release-monitoring.prod.anitya.project.flag.set", {"message": {"agent": "pingou", "state": "closed", "project": {}}}),
        ("org.fedoraproject.prod.askbot.tag.update", {"agent": "ralph", "thread": {"title": "some title"}, "tagnames": []}),
        ("org.fedoraproject.prod.fedoratagger.tag.create", {"tag": {"tag": "x", "package": {"name": "nethack", "icon": "https://x/y.png"}}, "user": {"username": "ralph"}}),
        ("org.fedoraproject.prod.wiki.upload.complete", {"user_text": "Ralph", "title": {"mPrefixedText": "File:Cat.jpg"}, "url": "/w/uploads/d/d1/Cat.jpg"}),
        ("org.fedoraproject.prod.mbs.module.state.change", {"id": [1], "name": {"x": 1}, "state": None}),
        ("org.fedoraproject.prod.greenwave.decision.update", {"subject": "not-a-list", "decision_context": None}),
    ],
)  # fmt: skip
def test_the_shapes_the_issue_saw_on_the_firehose_no_longer_break(engine: MetaEngine, topic: str, body: Any) -> None:
    """The real broken outputs (reprs, empty slots, links without host) become readable sentences and working links."""
    meta = engine.compute(make(topic, body))
    assert sentence_problem(meta.subtitle) is None, meta.subtitle
    assert "{" not in meta.subtitle and "[" not in meta.subtitle, meta.subtitle
    assert meta.link is None or valid_link(meta.link), meta.link
