"""Projects (admin only): the tenants that own users, networks, images and instances."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlmodel import Session, col, delete, select

from libs.db import Image, Instance, InstanceStatus, Network, Project, User
from libs.errors import NotFound

from ..deps import AdminDep, SessionDep
from ..errors import InUse
from ..queries import PageDep, commit_unique, paginate
from ..schemas import ProjectCreate, ProjectList, ProjectPublic

router = APIRouter(prefix="/v1/projects", tags=["projects"])


def get_project(session: Session, project_id: str) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id!r} not found")
    return project


@router.post("", status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, session: SessionDep, _: AdminDep) -> ProjectPublic:
    project = Project(name=body.name, description=body.description)
    session.add(project)
    commit_unique(session, f"a project named {body.name!r} exists")
    return ProjectPublic.from_row(project)


@router.get("")
def list_projects(session: SessionDep, _: AdminDep, page: PageDep) -> ProjectList:
    rows, next_marker = paginate(session, select(Project), col(Project.id), page)
    return ProjectList(projects=[ProjectPublic.from_row(r) for r in rows], next_marker=next_marker)


@router.get("/{project_id}")
def show_project(project_id: str, session: SessionDep, _: AdminDep) -> ProjectPublic:
    return ProjectPublic.from_row(get_project(session, project_id))


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(project_id: str, session: SessionDep, _: AdminDep) -> None:
    project = get_project(session, project_id)
    owned = {
        "users": select(User.id).where(col(User.project_id) == project.id),
        "networks": select(Network.id).where(col(Network.project_id) == project.id),
        "images": select(Image.id).where(col(Image.project_id) == project.id),
        "instances": select(Instance.id).where(
            col(Instance.project_id) == project.id, col(Instance.status) != InstanceStatus.DELETED
        ),
    }
    for what, statement in owned.items():
        if session.exec(statement.limit(1)).first() is not None:
            raise InUse(f"project {project.name!r} still has {what}; delete them first")
    # Records of deleted instances are kept for clients polling them; they go with it.
    session.exec(delete(Instance).where(col(Instance.project_id) == project.id))
    session.delete(project)
    session.commit()
